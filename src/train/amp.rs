//! Mixed precision: autocast of the forward pass (bf16 on CPU or CUDA, fp16) and, for fp16,
//! dynamic loss scaling as `torch.amp.GradScaler` does it: the loss is multiplied by a
//! scale, gradients are unscaled before clipping and the update, a step with NaN or
//! infinite gradients is skipped on the device, and the scale halves after such a step and
//! doubles after 2000 clean ones. The scaler's state is saved in checkpoints.

use crate::shim::{self, ShimError};
use tch::{Device, Kind, Tensor};

/// GradScaler's defaults.
const INIT_SCALE: f64 = 65536.0;
const GROWTH: f64 = 2.0;
const BACKOFF: f64 = 0.5;
const GROWTH_INTERVAL: i64 = 2000;

/// Dynamic loss scaling; all state lives on the device.
#[derive(Debug)]
pub struct Scaler {
    /// The current scale, a float scalar (0-dim, as GradScaler's: foreach ops want that).
    scale: Tensor,
    /// Clean steps since the last change, an int32 scalar.
    growth_tracker: Tensor,
    /// 1 if the last unscale met a NaN or infinity, a float scalar.
    found_inf: Tensor,
}

impl Scaler {
    /// A scaler on `device` at GradScaler's initial scale (65536), with no clean steps.
    pub fn new(device: Device) -> Scaler {
        Scaler {
            scale: Tensor::full([], INIT_SCALE, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([], (Kind::Int, device)),
            found_inf: Tensor::zeros([], (Kind::Float, device)),
        }
    }

    /// The loss to call `backward` on.
    pub fn scale(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale
    }

    /// Unscales `grads` in place; returns the device flag (a float scalar) that is 1 when any
    /// gradient is NaN or infinite.
    pub fn unscale(&mut self, grads: &[Tensor]) -> Result<&Tensor, ShimError> {
        let _ = self.found_inf.zero_();
        let inv = self.scale.reciprocal();
        shim::amp_unscale(grads, &self.found_inf, &inv)?;
        Ok(&self.found_inf)
    }

    /// After the step: back off after a skipped step, grow after enough clean ones.
    pub fn update(&mut self) {
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            &self.found_inf,
            GROWTH,
            BACKOFF,
            GROWTH_INTERVAL,
        );
    }

    /// The current scale (a host sync; for tests).
    #[cfg(test)]
    pub fn current(&self) -> f64 {
        self.scale.double_value(&[])
    }

    /// The state as named tensors for checkpoints (`scaler.scale`, `scaler.growth_tracker`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("scaler.scale".into(), self.scale.to_device(Device::Cpu)),
            (
                "scaler.growth_tracker".into(),
                self.growth_tracker.to_device(Device::Cpu),
            ),
        ]
    }

    /// Takes the scaler's entries out of checkpoint state and restores them; returns the
    /// rest. An entry that is not one number in its range is an error naming it.
    pub fn load_state(
        &mut self,
        tensors: Vec<(String, Tensor)>,
    ) -> anyhow::Result<Vec<(String, Tensor)>> {
        let device = self.scale.device();
        let mut rest = Vec::with_capacity(tensors.len());
        for (name, t) in tensors {
            let range = match name.as_str() {
                "scaler.scale" => f32::MIN_POSITIVE as f64..=f32::MAX as f64,
                "scaler.growth_tracker" => 0.0..=i32::MAX as f64,
                _ => {
                    rest.push((name, t));
                    continue;
                }
            };
            let whole = name == "scaler.growth_tracker";
            let what = if whole {
                "the growth tracker"
            } else {
                "the loss scale"
            };
            let v = super::optimizer::state_scalar(&name, what, &t, range, whole)?
                .f_to_device(device)?;
            if whole {
                self.growth_tracker = v.f_to_kind(Kind::Int)?;
            } else {
                self.scale = v.f_to_kind(Kind::Float)?;
            }
        }
        Ok(rest)
    }
}

/// Drops the scaler's entries from checkpoint state (a run without fp16 resuming one with).
pub fn without_scaler(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .filter(|(n, _)| !n.starts_with("scaler."))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_skips_backs_off_and_round_trips() {
        let mut s = Scaler::new(Device::Cpu);
        let g = [Tensor::from_slice(&[65536.0f32, 131072.0])];
        let found = s.unscale(&g).unwrap().double_value(&[]);
        assert_eq!(found, 0.0);
        assert!(g[0].allclose(&Tensor::from_slice(&[1.0f32, 2.0]), 0.0, 0.0, false));
        s.update();
        assert_eq!(s.current(), INIT_SCALE);
        let bad = [Tensor::from_slice(&[f32::INFINITY, 1.0])];
        assert_eq!(s.unscale(&bad).unwrap().double_value(&[]), 1.0);
        s.update();
        assert_eq!(s.current(), INIT_SCALE * BACKOFF);
        let mut other = Scaler::new(Device::Cpu);
        let rest = other
            .load_state(
                s.state_tensors()
                    .into_iter()
                    .chain([("w.step".to_string(), Tensor::from(1i64))])
                    .collect(),
            )
            .unwrap();
        assert_eq!(other.current(), INIT_SCALE * BACKOFF);
        assert_eq!(rest.len(), 1);
        for (name, bad) in [
            ("scaler.scale", Tensor::from_slice(&[1.0f32, 2.0])),
            ("scaler.scale", Tensor::from(f32::NAN)),
            ("scaler.scale", Tensor::from(-1.0f32)),
            ("scaler.growth_tracker", Tensor::from(-3i32)),
        ] {
            let e = other
                .load_state(vec![(name.to_string(), bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(name), "{e}");
        }
        assert_eq!(other.current(), INIT_SCALE * BACKOFF);
    }
}
