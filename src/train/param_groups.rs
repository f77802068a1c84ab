//! Which parameters train, and with which learning rate and weight decay: freezing by name
//! prefix and optimizer parameter groups (shared by fine-tuning and the optimizer).

use super::optimizer::ParamGroup;
use crate::config::OptimizerConfig;
use tch::nn::VarStore;
use tch::Tensor;

/// Whether `name` lies under `prefix` (`layer1` matches `layer1.0.conv1.weight`, not `layer10`).
pub fn under(name: &str, prefix: &str) -> bool {
    name == prefix
        || name
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Sets `requires_grad` of every trainable parameter from `frozen` prefixes; returns the
/// number of frozen tensors. Frozen BatchNorm layers then run in eval mode.
pub fn apply_freeze(vs: &VarStore, frozen: &[String]) -> usize {
    let trainable = vs.trainable_variables();
    let mut n = 0;
    for (name, t) in vs.variables() {
        // Buffers (running statistics) were never trainable: leave them alone.
        if !is_parameter(&trainable, &t) {
            continue;
        }
        let freeze = frozen.iter().any(|p| under(&name, p));
        let _ = t.set_requires_grad(!freeze);
        n += freeze as usize;
    }
    n
}

/// Whether `t` is one of `trainable` (a `VarStore`'s `trainable_variables()`, frozen ones
/// included), not a buffer such as BatchNorm's running statistics.
pub(crate) fn is_parameter(trainable: &[Tensor], t: &Tensor) -> bool {
    trainable.iter().any(|v| v.is_set_to(t))
}

/// Prefixes in `frozen` that match no parameter (likely typos).
pub fn unmatched_prefixes(vs: &VarStore, prefixes: &[String]) -> Vec<String> {
    let names: Vec<String> = vs.variables().into_keys().collect();
    prefixes
        .iter()
        .filter(|p| !names.iter().any(|n| under(n, p)))
        .cloned()
        .collect()
}

/// Splits the trainable parameters into optimizer groups: configured groups by prefix in
/// order, then the rest; with `no_decay_bias_and_norm`, 1-d tensors (biases, norm weights)
/// of each group go to a twin group without weight decay.
pub fn build(vs: &VarStore, cfg: &OptimizerConfig) -> Vec<ParamGroup> {
    let trainable = vs.trainable_variables();
    let mut named: Vec<(String, tch::Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| trainable.iter().any(|v| v.is_set_to(t)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));

    let mut specs: Vec<(String, f64, f64)> = cfg
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            (
                format!("groups[{i}]"),
                g.lr_scale,
                g.weight_decay.unwrap_or(cfg.weight_decay),
            )
        })
        .collect();
    specs.push(("default".into(), 1.0, cfg.weight_decay));

    let mut groups: Vec<ParamGroup> = Vec::new();
    let mut push = |label: String,
                    lr_scale: f64,
                    weight_decay: f64,
                    name: String,
                    t: tch::Tensor| {
        match groups.iter_mut().find(|g| g.label == label) {
            Some(g) => g.params.push((name, t)),
            None => groups.push(ParamGroup {
                label,
                params: vec![(name, t)],
                lr_scale,
                weight_decay,
            }),
        }
    };
    for (name, t) in named {
        let i = cfg
            .groups
            .iter()
            .position(|g| g.prefixes.iter().any(|p| under(&name, p)))
            .unwrap_or(specs.len() - 1);
        let (label, lr_scale, wd) = specs[i].clone();
        if cfg.no_decay_bias_and_norm && t.dim() <= 1 {
            push(format!("{label}/no_decay"), lr_scale, 0.0, name, t);
        } else {
            push(label, lr_scale, wd, name, t);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, ModelConfig, ParamGroupConfig};
    use crate::models::Model;
    use tch::Device;

    fn resnet() -> (VarStore, Model) {
        let vs = VarStore::new(Device::Cpu);
        let m = Model::new(
            &vs.root(),
            &ModelConfig {
                arch: Arch::Resnet18,
                ..Default::default()
            },
            3,
        );
        (vs, m)
    }

    #[test]
    fn prefixes_match_whole_components() {
        assert!(under("layer1.0.conv1.weight", "layer1"));
        assert!(under("layer1", "layer1"));
        assert!(!under("layer10.weight", "layer1"));
        assert!(under("layer1.0.conv1.weight", "layer1.0"));
    }

    #[test]
    fn groups_split_by_prefix_and_decay() {
        let (vs, _m) = resnet();
        let cfg = OptimizerConfig {
            groups: vec![ParamGroupConfig {
                prefixes: vec!["fc".into()],
                lr_scale: 10.0,
                weight_decay: None,
            }],
            ..Default::default()
        };
        let groups = build(&vs, &cfg);
        let labels: Vec<&str> = groups.iter().map(|g| g.label.as_str()).collect();
        assert!(
            labels.contains(&"groups[0]")
                && labels.contains(&"groups[0]/no_decay")
                && labels.contains(&"default")
        );
        let fc = groups.iter().find(|g| g.label == "groups[0]").unwrap();
        assert_eq!(fc.params.len(), 1);
        assert_eq!(fc.lr_scale, 10.0);
        let total: usize = groups.iter().map(|g| g.params.len()).sum();
        assert_eq!(total, vs.trainable_variables().len());
        assert!(groups
            .iter()
            .flat_map(|g| &g.params)
            .all(|(n, _)| !n.contains("running")));
    }

    #[test]
    fn freezing_sets_requires_grad_by_prefix() {
        let (vs, _m) = resnet();
        let n = apply_freeze(&vs, &["conv1".into(), "layer1".into()]);
        assert_eq!(n, 1 + 2 * 6); // conv1 + two blocks of (conv, bn weight, bn bias) x 2
        let vars = vs.variables();
        assert!(!vars["conv1.weight"].requires_grad());
        assert!(!vars["layer1.1.bn2.bias"].requires_grad());
        assert!(vars["layer2.0.conv1.weight"].requires_grad());
        assert_eq!(
            unmatched_prefixes(&vs, &["layer9".into(), "fc".into()]),
            vec!["layer9".to_string()]
        );
    }
}
