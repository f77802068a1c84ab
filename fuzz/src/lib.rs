//! The fuzz targets: each feeds untrusted bytes to one of hondo's readers and must return
//! (an `Ok` or an `Err`), never panic, abort, hang or exhaust memory. Used by the libFuzzer
//! binaries in `fuzz_targets/` and by the stable driver `src/bin/smoke.rs`.

use std::path::Path;

/// All targets by name, as the driver and the seed directories (`seeds/<name>/`) call them.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("config", config),
    ("pth", pth),
    ("safetensors", safetensors),
    ("image", image),
];

/// `hondo::config::load_str`: TOML text (lossily decoded) through parsing and validation.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = hondo::config::load_str(&text, "fuzz.toml", &[]);
}

/// The `torch.save` reader (zip and legacy) with its unpickler.
pub fn pth(data: &[u8]) {
    let _ = hondo::weights::read_bytes(Path::new("fuzz.pth"), data);
}

/// The safetensors reader, the checkpoint reader on the same bytes, and, for a checkpoint
/// that reads, the rebuild of its model (as `predict`, `eval` and `export` do).
pub fn safetensors(data: &[u8]) {
    let path = Path::new("fuzz.safetensors");
    let _ = hondo::weights::read_bytes(path, data);
    if hondo::checkpoint::from_bytes(path, data).is_ok() {
        let dir = std::env::temp_dir().join(format!("hondo-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("ckpt.safetensors");
        if std::fs::write(&file, data).is_ok() {
            let _ = hondo::checkpoint::restore(&file, tch::Device::Cpu);
        }
    }
}

/// Image decoding with the default `data.max_image_side`.
pub fn image(data: &[u8]) {
    let _ = hondo::data::decode::decode_bytes(data, 16384);
}
