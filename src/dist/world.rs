//! Where this process sits in a multi-process job, from the launcher's environment:
//! torchrun's (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`, `TORCHELASTIC_USE_AGENT_STORE`, `TORCHELASTIC_RESTART_COUNT`), or
//! Slurm's (`SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_NTASKS`, the first host of
//! `SLURM_STEP_NODELIST`) when `RANK` is not set; `GLOO_SOCKET_IFNAME` as in PyTorch.

/// Which launcher's variables described the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// torchrun, or anything that sets PyTorch's `env://` variables.
    Env,
    /// `srun`.
    Slurm,
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// Global rank, 0 to `size - 1`.
    pub rank: usize,
    /// Rank on this host.
    pub local_rank: usize,
    /// Processes in the job.
    pub size: usize,
    /// Processes on this host.
    pub local_size: usize,
    /// The store's host.
    pub master_addr: String,
    /// The store's port.
    pub master_port: u16,
    /// Whether the launcher's agent hosts the store (then every rank is a client).
    pub agent_store: bool,
    /// Restarts of the job so far (`TORCHELASTIC_RESTART_COUNT`).
    pub restart_count: usize,
    /// Gloo's network interface (`GLOO_SOCKET_IFNAME`).
    pub interface: Option<String>,
    /// Where the variables came from.
    pub launcher: Launcher,
}

/// An environment that describes a job inconsistently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WorldError(pub String);

/// PyTorch's default store port.
const DEFAULT_PORT: u16 = 29500;
/// The largest job hondo accepts.
pub const MAX_WORLD: usize = 65_536;

impl World {
    /// Reads the process environment; `Ok(None)` for a single process.
    pub fn from_env() -> Result<Option<World>, WorldError> {
        World::from_vars(|k| std::env::var(k).ok())
    }

    /// [`World::from_env`] over any lookup (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>, WorldError> {
        let num =
            |key: &str| -> Result<Option<usize>, WorldError> {
                match var(key) {
                    None => Ok(None),
                    Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                        WorldError(format!("{key}={v:?} is not a non-negative integer"))
                    }),
                }
            };
        let port = |default: Option<u16>| -> Result<u16, WorldError> {
            match var("MASTER_PORT") {
                None => default
                    .ok_or_else(|| WorldError("WORLD_SIZE is set but MASTER_PORT is not".into())),
                Some(v) => match v.trim().parse::<u16>() {
                    Ok(p) if p > 0 => Ok(p),
                    _ => Err(WorldError(format!(
                        "MASTER_PORT={v:?} is not a port (1 to 65535)"
                    ))),
                },
            }
        };
        let interface = var("GLOO_SOCKET_IFNAME").filter(|s| !s.is_empty());
        let world = if let Some(size) = num("WORLD_SIZE")? {
            let rank = num("RANK")?.ok_or_else(|| {
                WorldError(
                    "WORLD_SIZE is set but RANK is not (set both, or launch with torchrun)".into(),
                )
            })?;
            let master_addr = var("MASTER_ADDR")
                .filter(|s| !s.is_empty())
                .ok_or_else(|| WorldError("WORLD_SIZE is set but MASTER_ADDR is not".into()))?;
            World {
                rank,
                local_rank: num("LOCAL_RANK")?.unwrap_or(0),
                size,
                local_size: num("LOCAL_WORLD_SIZE")?.unwrap_or(size),
                master_addr,
                master_port: port(None)?,
                agent_store: var("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True"),
                restart_count: num("TORCHELASTIC_RESTART_COUNT")?.unwrap_or(0),
                interface,
                launcher: Launcher::Env,
            }
        } else if var("RANK").is_some() {
            return Err(WorldError("RANK is set but WORLD_SIZE is not".into()));
        } else if let (Some(rank), Some(size)) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?) {
            if size <= 1 {
                return Ok(None);
            }
            let master_addr = match var("MASTER_ADDR").filter(|s| !s.is_empty()) {
                Some(a) => a,
                None => {
                    let list = var("SLURM_STEP_NODELIST")
                        .or_else(|| var("SLURM_JOB_NODELIST"))
                        .ok_or_else(|| {
                            WorldError("SLURM_NTASKS is set but no SLURM_STEP_NODELIST".into())
                        })?;
                    first_host(&list).ok_or_else(|| {
                        WorldError(format!("SLURM_STEP_NODELIST={list:?} names no host"))
                    })?
                }
            };
            World {
                rank,
                local_rank: num("SLURM_LOCALID")?.unwrap_or(0),
                size,
                local_size: num("SLURM_NTASKS_PER_NODE")?.unwrap_or(size),
                master_addr,
                master_port: port(Some(DEFAULT_PORT))?,
                agent_store: false,
                restart_count: num("SLURM_RESTART_COUNT")?.unwrap_or(0),
                interface,
                launcher: Launcher::Slurm,
            }
        } else {
            return Ok(None);
        };
        if !(1..=MAX_WORLD).contains(&world.size) {
            return Err(WorldError(format!(
                "a world of {} processes: must be 1 to {MAX_WORLD}",
                world.size
            )));
        }
        if world.rank >= world.size {
            return Err(WorldError(format!(
                "rank {} is not below the world size {}",
                world.rank, world.size
            )));
        }
        Ok(Some(world))
    }
}

/// The first host of a Slurm node list: `node[07-09,12],gpu1` gives `node07`.
pub(crate) fn first_host(list: &str) -> Option<String> {
    let first = {
        let mut depth = 0;
        let end = list
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    _ => {}
                }
                c == ',' && depth == 0
            })
            .map_or(list.len(), |(i, _)| i);
        list[..end].trim()
    };
    if first.is_empty() {
        return None;
    }
    match first.split_once('[') {
        None => Some(first.to_string()),
        Some((prefix, rest)) => {
            let range = rest.trim_end_matches(']').split(',').next()?;
            let start = range.split('-').next()?;
            (!start.is_empty()).then(|| format!("{prefix}{start}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn world(vars: &[(&str, &str)]) -> Result<Option<World>, WorldError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_variables() {
        let w = world(&[
            ("RANK", "1"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "29511"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((w.rank, w.size, w.master_port), (1, 2, 29511));
        assert!(w.agent_store);
        assert_eq!(w.restart_count, 1);
        assert_eq!(w.launcher, Launcher::Env);
        assert_eq!(world(&[]).unwrap(), None);
    }

    #[test]
    fn inconsistent_variables_are_refused() {
        let e = world(&[("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.0.contains("RANK"), "{e}");
        let e = world(&[("RANK", "0")]).unwrap_err();
        assert!(e.0.contains("WORLD_SIZE"), "{e}");
        let base = [
            ("RANK", "2"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ];
        assert!(world(&base).unwrap_err().0.contains("not below"));
        let e = world(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "0"),
        ]);
        assert!(e.unwrap_err().0.contains("MASTER_PORT"));
        let e = world(&[("RANK", "x"), ("WORLD_SIZE", "2")]);
        assert!(e.unwrap_err().0.contains("RANK=\"x\""));
    }

    #[test]
    fn slurm_variables_and_node_lists() {
        let w = world(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_STEP_NODELIST", "gpu[07-09,12],cpu1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((w.rank, w.local_rank, w.size), (3, 1, 4));
        assert_eq!(w.master_addr, "gpu07");
        assert_eq!(w.master_port, 29500);
        assert_eq!(w.launcher, Launcher::Slurm);
        assert_eq!(first_host("a1,b2").as_deref(), Some("a1"));
        assert_eq!(first_host("n[001-004]").as_deref(), Some("n001"));
        assert_eq!(first_host(""), None);
        // One task is a single process.
        assert_eq!(
            world(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(),
            None
        );
    }
}
