//! SGD, Adam and AdamW over tch tensors, with state we own so that it is saved in
//! checkpoints and restored on resume (tch's `nn::Optimizer` hides its state).
//!
//! The update rules are `torch.optim`'s (PyTorch 2.11, non-foreach defaults): SGD with
//! dampening 0; Adam with L2 weight decay; AdamW with decoupled weight decay; bias
//! correction per parameter step.
//!
//! Two implementations of the same rules: libtorch's fused kernels (`_fused_sgd_`,
//! `_fused_adam_`, `_fused_adamw_`: one call per parameter group, through the C++ shim), and
//! a per-tensor reference in tch ops (`optimizer.fused = false`), kept to test the fused
//! path against.

use crate::config::{OptimizerConfig, OptimizerKind};
use crate::shim::{self, ShimError};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

/// Parameters that share a learning-rate scale and a weight decay.
#[derive(Debug)]
pub struct ParamGroup {
    /// A label for logs (`default`, `groups[0]`, `default/no_decay`...).
    pub label: String,
    /// The parameters by VarStore name (the names key the optimizer state). Frozen ones
    /// may be listed: they are skipped while they do not require grad.
    pub params: Vec<(String, Tensor)>,
    /// Multiplies the scheduled learning rate for this group (>= 0).
    pub lr_scale: f64,
    /// Weight decay (>= 0): L2 for SGD and Adam, decoupled for AdamW.
    pub weight_decay: f64,
}

/// Per-parameter state, as `torch.optim` keeps it (`step` a float scalar on the
/// parameter's device, so that a skipped step never needs the host).
#[derive(Debug)]
struct ParamState {
    step: Tensor,
    momentum_buffer: Option<Tensor>,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
}

impl ParamState {
    fn new(p: &Tensor) -> ParamState {
        ParamState {
            step: Tensor::zeros([], (Kind::Float, p.device())),
            momentum_buffer: None,
            exp_avg: None,
            exp_avg_sq: None,
        }
    }
}

/// SGD, Adam or AdamW over [`ParamGroup`]s, with per-parameter state that
/// [`Optimizer::state_tensors`] saves and a checkpoint's restore loads back.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    momentum: f64,
    nesterov: bool,
    betas: (f64, f64),
    eps: f64,
    fused: bool,
    groups: Vec<ParamGroup>,
    state: BTreeMap<String, ParamState>,
}

impl Optimizer {
    /// An optimizer of `cfg.name` (momentum, betas, eps and the fused path from `cfg`)
    /// over `groups`, with empty state; the learning rate comes with each
    /// [`Optimizer::step`].
    pub fn new(cfg: &OptimizerConfig, groups: Vec<ParamGroup>) -> Optimizer {
        Optimizer {
            kind: cfg.name,
            momentum: cfg.momentum,
            nesterov: cfg.nesterov,
            betas: (cfg.betas[0], cfg.betas[1]),
            eps: cfg.eps,
            fused: cfg.fused,
            groups,
            state: BTreeMap::new(),
        }
    }

    /// Uses libtorch's fused kernels (`true`) or the per-tensor reference update.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// The parameter groups, in the order they were given.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Drops every gradient (set to none, PyTorch's default): frees their memory until
    /// the next backward, which then writes gradients instead of adding to zeros.
    pub fn zero_grad(&mut self) -> Result<(), ShimError> {
        let params: Vec<Tensor> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter().map(|(_, p)| p.shallow_clone()))
            .collect();
        shim::set_grads_to_none(&params)
    }

    /// All gradients that exist, for clipping and checks.
    pub fn grads(&self) -> Vec<Tensor> {
        self.groups
            .iter()
            .flat_map(live)
            .map(|(_, _, grad)| grad)
            .collect()
    }

    /// One update at base learning rate `lr`; frozen parameters and parameters without a
    /// gradient are left alone. `found_inf` (a float scalar on the device) non-zero skips
    /// the update and leaves the state as it was, without a host sync on the fused path.
    pub fn step(&mut self, lr: f64, found_inf: Option<&Tensor>) -> Result<(), ShimError> {
        if self.fused {
            return tch::no_grad(|| self.fused_step(lr, found_inf));
        }
        if found_inf.is_some_and(|f| f.double_value(&[]) != 0.0) {
            return Ok(());
        }
        tch::no_grad(|| {
            for g in &self.groups {
                let lr = lr * g.lr_scale;
                for (name, p, grad) in live(g) {
                    let state = self
                        .state
                        .entry(name.clone())
                        .or_insert_with(|| ParamState::new(p));
                    let _ = state.step.g_add_scalar_(1.0);
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
        Ok(())
    }

    /// One fused kernel call per group. Momentum buffers start at zero, which gives
    /// exactly `torch.optim`'s first step (`buf = grad`) and survives a skipped first step.
    fn fused_step(&mut self, lr: f64, found_inf: Option<&Tensor>) -> Result<(), ShimError> {
        let adam = self.kind != OptimizerKind::Sgd;
        let momentum = self.momentum;
        for g in &self.groups {
            let mut params = Vec::with_capacity(g.params.len());
            let mut grads = Vec::with_capacity(g.params.len());
            let mut a = Vec::with_capacity(g.params.len());
            let mut b = Vec::with_capacity(if adam { g.params.len() } else { 0 });
            let mut steps = Vec::with_capacity(g.params.len());
            for (name, p, grad) in live(g) {
                let s = self
                    .state
                    .entry(name.clone())
                    .or_insert_with(|| ParamState::new(p));
                if adam {
                    a.push(
                        s.exp_avg
                            .get_or_insert_with(|| p.zeros_like())
                            .shallow_clone(),
                    );
                    b.push(
                        s.exp_avg_sq
                            .get_or_insert_with(|| p.zeros_like())
                            .shallow_clone(),
                    );
                } else if momentum != 0.0 {
                    a.push(
                        s.momentum_buffer
                            .get_or_insert_with(|| p.zeros_like())
                            .shallow_clone(),
                    );
                }
                steps.push(s.step.shallow_clone());
                params.push(p.shallow_clone());
                grads.push(grad);
            }
            if params.is_empty() {
                continue;
            }
            let lr = lr * g.lr_scale;
            if adam {
                shim::fused_adam(
                    &params,
                    &grads,
                    &a,
                    &b,
                    &steps,
                    lr,
                    self.betas,
                    g.weight_decay,
                    self.eps,
                    self.kind == OptimizerKind::Adamw,
                    found_inf,
                )?;
            } else {
                shim::fused_sgd(
                    &params,
                    &grads,
                    &a,
                    &steps,
                    g.weight_decay,
                    momentum,
                    lr,
                    self.nesterov,
                    false,
                    found_inf,
                )?;
            }
        }
        Ok(())
    }

    /// The state as named tensors (`<param>.momentum_buffer`, `<param>.exp_avg`,
    /// `<param>.exp_avg_sq`, `<param>.step` as an int64 scalar), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, s) in &self.state {
            out.push((
                format!("{name}.step"),
                s.step.to_device(Device::Cpu).to_kind(Kind::Int64),
            ));
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
    /// parameter's device and keep its memory layout. Errors name an entry that fits no
    /// parameter.
    pub(crate) fn load_state(&mut self, tensors: Vec<(String, Tensor)>) -> anyhow::Result<()> {
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
            let s = state
                .entry(name.to_string())
                .or_insert_with(|| ParamState::new(p));
            if field == "step" {
                let step = state_scalar(&key, "a step count", &t, 0.0..=MAX_STEPS, true)?;
                s.step = step.f_to_kind(Kind::Float)?.f_to_device(p.device())?;
                continue;
            }
            anyhow::ensure!(
                t.size() == p.size(),
                "optimizer state `{key}` has shape {:?}, parameter has {:?}",
                t.size(),
                p.size()
            );
            // Same dtype, device and strides as the parameter (channels-last included).
            let like = p.empty_like();
            tch::no_grad(|| like.shallow_clone().copy_(&t));
            match field {
                "momentum_buffer" => s.momentum_buffer = Some(like),
                "exp_avg" => s.exp_avg = Some(like),
                "exp_avg_sq" => s.exp_avg_sq = Some(like),
                _ => anyhow::bail!("optimizer state entry `{key}`: unknown field `{field}`"),
            }
        }
        self.state = state;
        Ok(())
    }
}

/// The largest step count a restored optimizer state may hold (the checkpoint's own limit).
const MAX_STEPS: f64 = crate::checkpoint::MAX_STEPS as f64;

/// A checkpoint's optimizer-state entry `key`, which holds `what` (a step count, the loss
/// scale): one number in `range` (a whole one with `whole`), as a 0-dimensional double
/// tensor; otherwise an error naming it.
pub(crate) fn state_scalar(
    key: &str,
    what: &str,
    t: &Tensor,
    range: std::ops::RangeInclusive<f64>,
    whole: bool,
) -> anyhow::Result<Tensor> {
    anyhow::ensure!(
        t.numel() == 1,
        "optimizer state `{key}` has shape {:?}; {what} is one number",
        t.size()
    );
    let v = t.f_to_kind(Kind::Double)?.f_reshape([])?;
    let n = v.f_double_value(&[])?;
    anyhow::ensure!(
        range.contains(&n) && (!whole || n.fract() == 0.0),
        "optimizer state `{key}` is {n}; {what} is a {}number in {}..={}",
        if whole { "whole " } else { "" },
        range.start(),
        range.end()
    );
    Ok(v)
}

/// The parameters of a group that take an update: trainable and with a gradient.
fn live(g: &ParamGroup) -> impl Iterator<Item = (&String, &Tensor, Tensor)> + '_ {
    g.params
        .iter()
        .filter(|(_, p)| p.requires_grad())
        .filter_map(|(name, p)| {
            let grad = p.grad();
            grad.defined().then_some((name, p, grad))
        })
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
    let t = s.step.double_value(&[]);
    let bias1 = 1.0 - b1.powf(t);
    let bias2 = 1.0 - b2.powf(t);
    let denom = v.sqrt() / bias2.sqrt() + eps;
    let _ = p.addcdiv_(&(&*m * (-lr / bias1)), &denom);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_param(kind: OptimizerKind, wd: f64) -> (Optimizer, Tensor) {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let cfg = OptimizerConfig {
            name: kind,
            nesterov: false,
            fused: false,
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
        opt.step(0.1, None).unwrap(); // buf = g = 1; p -= 0.1
        set_grad(&p, &[1.0, 1.0]);
        opt.step(0.1, None).unwrap(); // buf = 0.9 + 1 = 1.9; p -= 0.19
        let v = Vec::<f32>::try_from(&p).unwrap();
        assert!((v[0] - (1.0 - 0.29)).abs() < 1e-6, "{v:?}");
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        let (mut opt, p) = one_param(OptimizerKind::Adam, 0.0);
        set_grad(&p, &[0.5, -3.0]);
        opt.step(0.01, None).unwrap();
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
        opt.step(0.01, None).unwrap();
        let saved = opt.state_tensors();
        assert_eq!(saved.len(), 3);
        let (mut other, _) = one_param(OptimizerKind::Adamw, 0.01);
        other
            .load_state(saved.iter().map(|(n, t)| (n.clone(), t.copy())).collect())
            .unwrap();
        assert_eq!(other.state["w"].step.double_value(&[]), 1.0);
        assert!(other.state["w"]
            .exp_avg
            .as_ref()
            .unwrap()
            .equal(opt.state["w"].exp_avg.as_ref().unwrap()));
        assert_eq!(p.device(), Device::Cpu);
        for bad in [
            Tensor::from_slice(&[1.0f32, 2.0, 3.0]),
            Tensor::from(-1i64),
            Tensor::from(0.5f64),
            Tensor::from(f64::INFINITY),
        ] {
            let e = other
                .load_state(vec![("w.step".into(), bad)])
                .unwrap_err()
                .to_string();
            assert!(e.contains("`w.step`"), "{e}");
        }
    }
}
