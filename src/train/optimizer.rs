//! SGD, Adam and AdamW over tch tensors, with state we own so that it is saved in
//! checkpoints and restored on resume (tch's `nn::Optimizer` hides its state).
//!
//! The update rules are `torch.optim`'s (PyTorch 2.11, non-foreach defaults): SGD with
//! dampening 0; Adam with L2 weight decay; AdamW with decoupled weight decay; bias
//! correction per parameter step.

use crate::config::{OptimizerConfig, OptimizerKind};
use std::collections::BTreeMap;
use tch::Tensor;

/// Parameters that share a learning-rate scale and a weight decay.
#[derive(Debug)]
pub struct ParamGroup {
    /// A label for logs (`default`, `no_decay`, `groups[0]`...).
    pub label: String,
    pub params: Vec<(String, Tensor)>,
    pub lr_scale: f64,
    pub weight_decay: f64,
}

/// Per-parameter state, as `torch.optim` keeps it.
#[derive(Debug, Default)]
struct ParamState {
    step: i64,
    momentum_buffer: Option<Tensor>,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
}

#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    momentum: f64,
    nesterov: bool,
    betas: (f64, f64),
    eps: f64,
    groups: Vec<ParamGroup>,
    state: BTreeMap<String, ParamState>,
}

impl Optimizer {
    pub fn new(cfg: &OptimizerConfig, groups: Vec<ParamGroup>) -> Optimizer {
        Optimizer {
            kind: cfg.name,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            betas: (cfg.betas[0], cfg.betas[1]),
            eps: cfg.eps,
            groups,
            state: BTreeMap::new(),
        }
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Sets every gradient to zero.
    pub fn zero_grad(&mut self) {
        for g in &mut self.groups {
            for (_, p) in &mut g.params {
                p.zero_grad();
            }
        }
    }

    /// All gradients that exist, for clipping and checks.
    pub fn grads(&self) -> Vec<Tensor> {
        self.groups
            .iter()
            .flat_map(|g| g.params.iter())
            .filter(|(_, p)| p.requires_grad())
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .collect()
    }

    /// One update at base learning rate `lr`; frozen parameters and parameters without a
    /// gradient are left alone.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for g in &self.groups {
                let lr = lr * g.lr_scale;
                for (name, p) in &g.params {
                    if !p.requires_grad() {
                        continue;
                    }
                    let grad = p.grad();
                    if !grad.defined() {
                        continue;
                    }
                    let state = self.state.entry(name.clone()).or_default();
                    state.step += 1;
                    let mut p = p.shallow_clone();
                    match self.kind {
                        OptimizerKind::Sgd => sgd(
                            &mut p,
                            &grad,
                            state,
                            lr,
                            g.weight_decay,
                            self.momentum,
                            self.nesterov,
                        ),
                        OptimizerKind::Adam | OptimizerKind::Adamw => adam(
                            &mut p,
                            &grad,
                            state,
                            lr,
                            g.weight_decay,
                            self.betas,
                            self.eps,
                            self.kind == OptimizerKind::Adamw,
                        ),
                    }
                }
            }
        });
    }

    /// The state as named tensors (`<param>.momentum_buffer`, `<param>.exp_avg`,
    /// `<param>.exp_avg_sq`, `<param>.step`), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, s) in &self.state {
            out.push((format!("{name}.step"), Tensor::from(s.step)));
            for (field, t) in [
                ("momentum_buffer", &s.momentum_buffer),
                ("exp_avg", &s.exp_avg),
                ("exp_avg_sq", &s.exp_avg_sq),
            ] {
                if let Some(t) = t {
                    out.push((format!("{name}.{field}"), t.shallow_clone()));
                }
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`]; tensors move to each
    /// parameter's device. Errors name an entry that fits no parameter.
    pub fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> anyhow::Result<()> {
        let params: BTreeMap<&str, &Tensor> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter())
            .map(|(n, p)| (n.as_str(), p))
            .collect();
        let mut state: BTreeMap<String, ParamState> = BTreeMap::new();
        for (key, t) in tensors {
            let (name, field) = key
                .rsplit_once('.')
                .ok_or_else(|| anyhow::anyhow!("optimizer state entry `{key}` has no field"))?;
            let p = params
                .get(name)
                .ok_or_else(|| anyhow::anyhow!("optimizer state for unknown parameter `{name}`"))?;
            let s = state.entry(name.to_string()).or_default();
            if field == "step" {
                s.step = t.int64_value(&[]);
                continue;
            }
            anyhow::ensure!(
                t.size() == p.size(),
                "optimizer state `{key}` has shape {:?}, parameter has {:?}",
                t.size(),
                p.size()
            );
            let t = t.to_device(p.device()).to_kind(p.kind());
            match field {
                "momentum_buffer" => s.momentum_buffer = Some(t),
                "exp_avg" => s.exp_avg = Some(t),
                "exp_avg_sq" => s.exp_avg_sq = Some(t),
                _ => anyhow::bail!("optimizer state entry `{key}`: unknown field `{field}`"),
            }
        }
        self.state = state;
        Ok(())
    }
}

fn sgd(
    p: &mut Tensor,
    grad: &Tensor,
    s: &mut ParamState,
    lr: f64,
    wd: f64,
    momentum: f64,
    nesterov: bool,
) {
    let mut d = if wd != 0.0 {
        grad + &*p * wd
    } else {
        grad.shallow_clone()
    };
    if momentum != 0.0 {
        let buf = match &mut s.momentum_buffer {
            Some(buf) => {
                let _ = buf.g_mul_scalar_(momentum).g_add_(&d);
                buf.shallow_clone()
            }
            None => {
                let buf = d.detach().copy();
                s.momentum_buffer = Some(buf.shallow_clone());
                buf
            }
        };
        d = if nesterov { d + buf * momentum } else { buf };
    }
    let _ = p.g_sub_(&(d * lr));
}

#[allow(clippy::too_many_arguments)]
fn adam(
    p: &mut Tensor,
    grad: &Tensor,
    s: &mut ParamState,
    lr: f64,
    wd: f64,
    betas: (f64, f64),
    eps: f64,
    decoupled: bool,
) {
    let (b1, b2) = betas;
    let grad = if decoupled {
        if wd != 0.0 {
            let _ = p.g_mul_scalar_(1.0 - lr * wd);
        }
        grad.shallow_clone()
    } else if wd != 0.0 {
        grad + &*p * wd
    } else {
        grad.shallow_clone()
    };
    let m = s.exp_avg.get_or_insert_with(|| grad.zeros_like());
    let _ = m.lerp_(&grad, 1.0 - b1);
    let v = s.exp_avg_sq.get_or_insert_with(|| grad.zeros_like());
    let _ = v.g_mul_scalar_(b2).addcmul_(&grad, &(&grad * (1.0 - b2)));
    let t = s.step as f64;
    let bias1 = 1.0 - b1.powf(t);
    let bias2 = 1.0 - b2.powf(t);
    let denom = v.sqrt() / bias2.sqrt() + eps;
    let _ = p.addcdiv_(&(&*m * (-lr / bias1)), &denom);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn one_param(kind: OptimizerKind, wd: f64) -> (Optimizer, Tensor) {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let cfg = OptimizerConfig {
            name: kind,
            nesterov: false,
            ..Default::default()
        };
        let group = ParamGroup {
            label: "all".into(),
            params: vec![("w".into(), p.shallow_clone())],
            lr_scale: 1.0,
            weight_decay: wd,
        };
        (Optimizer::new(&cfg, vec![group]), p)
    }

    fn set_grad(p: &Tensor, g: &[f32]) {
        let mut p = p.shallow_clone();
        p.zero_grad();
        let loss = (&p * Tensor::from_slice(g)).sum(Kind::Float);
        loss.backward();
    }

    #[test]
    fn sgd_momentum_matches_the_closed_form() {
        let (mut opt, p) = one_param(OptimizerKind::Sgd, 0.0);
        set_grad(&p, &[1.0, 1.0]);
        opt.step(0.1); // buf = g = 1; p -= 0.1
        set_grad(&p, &[1.0, 1.0]);
        opt.step(0.1); // buf = 0.9 + 1 = 1.9; p -= 0.19
        let v = Vec::<f32>::try_from(&p).unwrap();
        assert!((v[0] - (1.0 - 0.29)).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let (mut opt, p) = one_param(OptimizerKind::Adam, 0.0);
        set_grad(&p, &[0.5, -3.0]);
        opt.step(0.01);
        let v = Vec::<f32>::try_from(&p).unwrap();
        assert!(
            (v[0] - 0.99).abs() < 1e-5 && (v[1] + 1.99).abs() < 1e-5,
            "{v:?}"
        );
    }

    #[test]
    fn state_round_trips() {
        let (mut opt, p) = one_param(OptimizerKind::Adamw, 0.01);
        set_grad(&p, &[0.5, -3.0]);
        opt.step(0.01);
        let saved = opt.state_tensors();
        assert_eq!(saved.len(), 3);
        let (mut other, _) = one_param(OptimizerKind::Adamw, 0.01);
        other
            .load_state(saved.iter().map(|(n, t)| (n.clone(), t.copy())).collect())
            .unwrap();
        assert_eq!(other.state["w"].step, 1);
        assert!(other.state["w"]
            .exp_avg
            .as_ref()
            .unwrap()
            .equal(opt.state["w"].exp_avg.as_ref().unwrap()));
        assert_eq!(p.device(), Device::Cpu);
    }
}
