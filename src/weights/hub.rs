//! Pretrained weights by name, from the caches PyTorch users already have. hondo never
//! downloads: a name resolves to a file that torchvision or `huggingface_hub` put there,
//! and when it is absent the error says exactly what to fetch and where.
//!
//! - `torchvision:resnet50.IMAGENET1K_V2` (or `torchvision:resnet50`, torchvision's
//!   `DEFAULT`): `$TORCH_HOME/hub/checkpoints/resnet50-11ad3fa6.pth` (default
//!   `$XDG_CACHE_HOME/torch`, then `~/.cache/torch`), the file name torchvision's
//!   `load_state_dict_from_url` gives it. Its SHA-256 must start with the hex in the name,
//!   the check torchvision makes when it downloads (`model.check_hash = false` skips it).
//!   The weights' transforms (resize 256 or 232, crop 224) give the preprocessing.
//! - `hf:timm/resnet50.a1_in1k` (optionally `@REVISION`): the snapshot of the Hugging Face
//!   cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
//!   else `~/.cache/huggingface/hub`): `models--timm--resnet50.a1_in1k/refs/main` (or the
//!   revision) names the commit, `snapshots/<commit>/model.safetensors` holds the weights
//!   and `config.json` the preprocessing (`pretrained_cfg`: mean, std, input size,
//!   `crop_pct`).

use crate::config::Arch;
use sha2::Digest;
use std::io::Read;
use std::path::{Path, PathBuf};

/// One of torchvision's ResNet weights: architecture, enum name, file, resize side.
struct TorchvisionWeights {
    arch: Arch,
    name: &'static str,
    file: &'static str,
    resize: u32,
}

/// torchvision 0.26's ResNet weights (`torchvision/models/resnet.py`); the first of each
/// architecture's V2 (else V1) is its `DEFAULT`.
const TORCHVISION: &[TorchvisionWeights] = &[
    tv(
        Arch::Resnet18,
        "IMAGENET1K_V1",
        "resnet18-f37072fd.pth",
        256,
    ),
    tv(
        Arch::Resnet34,
        "IMAGENET1K_V1",
        "resnet34-b627a593.pth",
        256,
    ),
    tv(
        Arch::Resnet50,
        "IMAGENET1K_V1",
        "resnet50-0676ba61.pth",
        256,
    ),
    tv(
        Arch::Resnet50,
        "IMAGENET1K_V2",
        "resnet50-11ad3fa6.pth",
        232,
    ),
    tv(
        Arch::Resnet101,
        "IMAGENET1K_V1",
        "resnet101-63fe2227.pth",
        256,
    ),
    tv(
        Arch::Resnet101,
        "IMAGENET1K_V2",
        "resnet101-cd907fc2.pth",
        232,
    ),
    tv(
        Arch::Resnet152,
        "IMAGENET1K_V1",
        "resnet152-394f9c45.pth",
        256,
    ),
    tv(
        Arch::Resnet152,
        "IMAGENET1K_V2",
        "resnet152-f82ba261.pth",
        232,
    ),
];

const fn tv(arch: Arch, name: &'static str, file: &'static str, resize: u32) -> TorchvisionWeights {
    TorchvisionWeights {
        arch,
        name,
        file,
        resize,
    }
}

const TORCHVISION_URL: &str = "https://download.pytorch.org/models/";
const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

/// The preprocessing that comes with named weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocessing {
    /// Per-channel mean of the inputs.
    pub mean: [f64; 3],
    /// Per-channel standard deviation.
    pub std: [f64; 3],
    /// Side of the square input.
    pub image_size: u32,
    /// Crop side over resize side.
    pub crop_fraction: f64,
}

/// A weights name resolved to a file in a cache.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The weights file.
    pub path: PathBuf,
    /// The architecture the weights are for.
    pub arch: Arch,
    /// Their preprocessing, when the source says.
    pub preprocessing: Option<Preprocessing>,
}

/// Why a weights name does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The name is not one hondo knows.
    #[error("{0}")]
    UnknownName(String),
    /// The file is not in the cache: what to fetch and where.
    #[error("{name} is not in the {cache} cache: {fix}")]
    NotCached {
        /// The name asked for.
        name: String,
        /// Which cache (`torch hub`, `Hugging Face`).
        cache: &'static str,
        /// The command or URL and path that puts it there.
        fix: String,
    },
    /// The file's SHA-256 does not start with the prefix in its name.
    #[error(
        "{}: SHA-256 {actual} does not start with {expected}, the prefix in its name (a \
         partial or replaced download: fetch it again, or set model.check_hash = false)",
        path.display()
    )]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The prefix in its name.
        expected: String,
        /// Its SHA-256.
        actual: String,
    },
    /// A cache file could not be read or is malformed.
    #[error("{}: {reason}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Whether `spec` is a weights name (`torchvision:...`, `hf:...`) rather than a path.
pub fn is_name(spec: &str) -> bool {
    spec.starts_with("torchvision:") || spec.starts_with("hf:")
}

fn env_dir(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn home_cache() -> PathBuf {
    env_dir("XDG_CACHE_HOME").unwrap_or_else(|| {
        env_dir("HOME")
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(".cache")
    })
}

/// torch.hub's checkpoint directory: `$TORCH_HOME/hub/checkpoints`, as `torch.hub.get_dir`.
pub fn torch_hub_checkpoints() -> PathBuf {
    env_dir("TORCH_HOME")
        .unwrap_or_else(|| home_cache().join("torch"))
        .join("hub")
        .join("checkpoints")
}

/// The Hugging Face hub cache, as `huggingface_hub` finds it.
pub fn hf_hub_cache() -> PathBuf {
    env_dir("HF_HUB_CACHE")
        .or_else(|| env_dir("HF_HOME").map(|h| h.join("hub")))
        .unwrap_or_else(|| home_cache().join("huggingface").join("hub"))
}

/// Resolves `spec` (see the module docs); `check_hash` verifies a torchvision file's hash.
pub fn resolve(spec: &str, check_hash: bool) -> Result<Resolved, HubError> {
    if let Some(rest) = spec.strip_prefix("torchvision:") {
        torchvision(spec, rest, check_hash)
    } else if let Some(rest) = spec.strip_prefix("hf:") {
        hugging_face(spec, rest)
    } else {
        Err(HubError::UnknownName(format!(
            "`{spec}` is not a weights name (torchvision:ARCH[.WEIGHTS] or hf:ORG/NAME)"
        )))
    }
}

/// torchvision's weights `rest` names (`ARCH[.WEIGHTS]`; no `.WEIGHTS`, or `DEFAULT`, is
/// the architecture's V2 where there is one, else V1).
fn torchvision_entry(rest: &str) -> Option<&'static TorchvisionWeights> {
    let (arch_name, weights) = match rest.split_once('.') {
        Some((a, w)) => (a, Some(w)),
        None => (rest, None),
    };
    TORCHVISION
        .iter()
        .filter(|w| w.arch.name() == arch_name)
        .filter(|w| weights.is_none_or(|n| n == w.name || n == "DEFAULT"))
        .max_by_key(|w| w.name)
}

fn torchvision(spec: &str, rest: &str, check_hash: bool) -> Result<Resolved, HubError> {
    let known = || {
        TORCHVISION
            .iter()
            .map(|w| format!("{}.{}", w.arch.name(), w.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entry = torchvision_entry(rest).ok_or_else(|| {
        HubError::UnknownName(format!(
            "`{spec}` is not one of torchvision's ResNet weights hondo knows ({})",
            known()
        ))
    })?;
    let dir = torch_hub_checkpoints();
    let path = dir.join(entry.file);
    if !path.is_file() {
        return Err(HubError::NotCached {
            name: spec.to_string(),
            cache: "torch hub",
            fix: format!(
                "fetch {TORCHVISION_URL}{} into {} (e.g. `mkdir -p {} && curl -L -o {} \
                 {TORCHVISION_URL}{}`, or in Python `torchvision.models.{}(weights=\"{}\")`)",
                entry.file,
                path.display(),
                dir.display(),
                path.display(),
                entry.file,
                entry.arch.name(),
                entry.name
            ),
        });
    }
    if check_hash {
        let expected = entry
            .file
            .rsplit_once('-')
            .and_then(|(_, h)| h.split('.').next())
            .unwrap_or_default();
        let actual = sha256(&path)?;
        if !actual.starts_with(expected) {
            return Err(HubError::HashMismatch {
                path,
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(Resolved {
        path,
        arch: entry.arch,
        preprocessing: Some(Preprocessing {
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
            image_size: 224,
            crop_fraction: 224.0 / f64::from(entry.resize),
        }),
    })
}

/// Hex SHA-256 of a file, read in 1 MiB pieces.
fn sha256(path: &Path) -> Result<String, HubError> {
    let unreadable = |reason: String| HubError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let (mut file, _) =
        crate::file::open_regular(path, crate::file::MAX_WEIGHTS_BYTES).map_err(unreadable)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| unreadable(format!("cannot read: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// `org/name` checked to be one repository id (no `..`, no extra slashes).
fn repo_id(spec: &str, id: &str) -> Result<(String, String), HubError> {
    let bad = || {
        HubError::UnknownName(format!(
            "`{spec}`: a Hugging Face model is hf:ORG/NAME[@REVISION]"
        ))
    };
    let (org, name) = id.split_once('/').ok_or_else(bad)?;
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !ok(org) || !ok(name) {
        return Err(bad());
    }
    Ok((org.to_string(), name.to_string()))
}

fn hugging_face(spec: &str, rest: &str) -> Result<Resolved, HubError> {
    let (id, revision) = match rest.split_once('@') {
        Some((id, r)) => (id, r),
        None => (rest, "main"),
    };
    let (org, name) = repo_id(spec, id)?;
    let repo = hf_hub_cache().join(format!("models--{org}--{name}"));
    let not_cached = |what: String| HubError::NotCached {
        name: spec.to_string(),
        cache: "Hugging Face",
        fix: format!(
            "{what}; run `hf download {org}/{name} model.safetensors config.json` (or \
             `huggingface-cli download ...`, {}) with HF_HUB_CACHE={}",
            if revision == "main" {
                String::from("the main revision")
            } else {
                format!("`--revision {revision}`")
            },
            hf_hub_cache().display()
        ),
    };
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_string()
    } else {
        if revision.contains('/') || revision.contains("..") {
            return Err(HubError::UnknownName(format!(
                "`{spec}`: `{revision}` is not a revision name"
            )));
        }
        let refs = repo.join("refs").join(revision);
        let text = crate::file::read_regular(&refs, crate::file::MAX_TEXT_BYTES)
            .map_err(|_| not_cached(format!("{} not found", refs.display())))?;
        String::from_utf8_lossy(&text).trim().to_string()
    };
    if commit.is_empty() || commit.contains('/') || commit.contains("..") {
        return Err(HubError::Unreadable {
            path: repo.join("refs").join(revision),
            reason: format!("`{commit}` is not a commit"),
        });
    }
    let snapshot = repo.join("snapshots").join(&commit);
    let path = snapshot.join("model.safetensors");
    if !path.is_file() {
        return Err(not_cached(format!("{} not found", path.display())));
    }
    let config = snapshot.join("config.json");
    let (arch, preprocessing) = timm_config(&config)?;
    Ok(Resolved {
        path,
        arch,
        preprocessing,
    })
}

/// The architecture and preprocessing of a timm `config.json`.
fn timm_config(path: &Path) -> Result<(Arch, Option<Preprocessing>), HubError> {
    let unreadable = |reason: String| HubError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = crate::file::read_regular(path, crate::file::MAX_TEXT_BYTES).map_err(unreadable)?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| unreadable(format!("not JSON: {e}")))?;
    let arch_name = v["architecture"]
        .as_str()
        .ok_or_else(|| unreadable("no \"architecture\"".into()))?;
    let arch = Arch::from_name(arch_name).ok_or_else(|| {
        unreadable(format!(
            "architecture `{arch_name}` is not one hondo builds (resnet18 to resnet152)"
        ))
    })?;
    let cfg = &v["pretrained_cfg"];
    let triple = |key: &str| -> Result<Option<[f64; 3]>, HubError> {
        match cfg[key].as_array() {
            None => Ok(None),
            Some(a) => {
                let vals: Vec<f64> = a.iter().filter_map(|x| x.as_f64()).collect();
                match vals[..] {
                    [a, b, c] if vals.iter().all(|v| v.is_finite()) => Ok(Some([a, b, c])),
                    _ => Err(unreadable(format!(
                        "pretrained_cfg.{key} is not three numbers"
                    ))),
                }
            }
        }
    };
    let (mean, std) = (triple("mean")?, triple("std")?);
    let size = cfg["input_size"]
        .as_array()
        .and_then(|a| a.get(1))
        .and_then(|s| s.as_u64());
    let crop = cfg["crop_pct"].as_f64();
    let preprocessing = match (mean, std, size, crop) {
        (None, None, None, None) => None,
        _ => Some(Preprocessing {
            mean: mean.unwrap_or(IMAGENET_MEAN),
            std: std.unwrap_or(IMAGENET_STD),
            image_size: size.map_or(224, |s| s.min(u64::from(u32::MAX)) as u32),
            crop_fraction: crop.unwrap_or(0.875),
        }),
    };
    Ok((arch, preprocessing))
}

/// One usable entry of the caches, for `hondo weights list`.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The name to put in `model.pretrained`.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// What the caches hold that hondo can load: torchvision's ResNet files by their names,
/// and Hugging Face snapshots of ResNets with a `model.safetensors` (their `main`
/// revision, else each snapshot by commit).
pub fn list() -> Vec<Cached> {
    let mut out = Vec::new();
    let dir = torch_hub_checkpoints();
    for w in TORCHVISION {
        let path = dir.join(w.file);
        if let Some(m) = std::fs::metadata(&path).ok().filter(|m| m.is_file()) {
            out.push(Cached {
                name: format!("torchvision:{}.{}", w.arch.name(), w.name),
                path,
                bytes: m.len(),
            });
        }
    }
    let hub = hf_hub_cache();
    let mut repos: Vec<PathBuf> = std::fs::read_dir(&hub)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("models--"))
        })
        .collect();
    repos.sort();
    for repo in repos {
        let Some(id) = repo
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("models--"))
            .and_then(|n| n.split_once("--"))
            .map(|(org, name)| format!("{org}/{name}"))
        else {
            continue;
        };
        let mut names = vec![format!("hf:{id}")];
        if let Ok(snaps) = std::fs::read_dir(repo.join("snapshots")) {
            let mut commits: Vec<String> = snaps
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect();
            commits.sort();
            names.extend(commits.into_iter().map(|c| format!("hf:{id}@{c}")));
        }
        // The main revision when it resolves; else every snapshot.
        for name in names {
            if let Ok(r) = resolve(&name, false) {
                let bytes = std::fs::metadata(&r.path).map_or(0, |m| m.len());
                out.push(Cached {
                    name: name.clone(),
                    path: r.path,
                    bytes,
                });
                if !name.contains('@') {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_names_follow_torchvision() {
        let only = |spec: &str| {
            torchvision_entry(spec.strip_prefix("torchvision:").unwrap()).map(|w| w.file)
        };
        assert_eq!(only("torchvision:resnet50"), Some("resnet50-11ad3fa6.pth"));
        assert_eq!(only("torchvision:resnet18"), Some("resnet18-f37072fd.pth"));
        assert_eq!(
            only("torchvision:resnet152.IMAGENET1K_V1"),
            Some("resnet152-394f9c45.pth")
        );
        assert!(matches!(
            resolve("torchvision:resnet18.IMAGENET1K_V2", true),
            Err(HubError::UnknownName(m)) if m.contains("resnet50.IMAGENET1K_V2")
        ));
        assert!(matches!(
            resolve("torchvision:vgg16", true),
            Err(HubError::UnknownName(_))
        ));
    }

    #[test]
    fn repository_ids_cannot_escape_the_cache() {
        for bad in [
            "hf:timm",
            "hf:../x",
            "hf:a/../../etc",
            "hf:a/b/c",
            "hf:/b",
            "hf:a/b@x/../y",
        ] {
            assert!(
                matches!(resolve(bad, true), Err(HubError::UnknownName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn sha256_matches_the_standard_value() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
