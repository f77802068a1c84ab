//! hondo: train image classifiers from a TOML config on libtorch (through `tch`).
//!
//! The `hondo` binary is a thin command line over this library; the same parts serve a
//! Rust program of your own:
//!
//! - [`config`]: the configuration (built in code, or read from TOML with overrides).
//! - [`models`]: the small CNN and ResNet-18 to -152 with torchvision's names, and
//!   [`models::ModelSpec`] to train a network of your own.
//! - [`weights`]: torchvision / timm weights (`.safetensors`, `.pth`, `.ot`) into a
//!   `VarStore`, with a report of what matched.
//! - [`data`]: datasets, transforms and the parallel loader.
//! - [`train`]: [`train::Trainer`], the loop (optimizers, schedules, AMP, EMA, mixing,
//!   checkpoints, resume), reporting through [`observe::Observer`]s.
//! - [`checkpoint`], [`evaluate`], [`predict`], [`export`], [`plot`]: what comes after.
//!
//! The library prints nothing; errors are [`Error`].
//!
//! ```no_run
//! use hondo::{config, observe, train::Trainer};
//!
//! let cfg = config::load_str(
//!     "[train]\nepochs = 2\n[data]\nkind = \"shapes\"\nimage_size = 32",
//!     "inline config",
//!     &[],
//! )?;
//! let summary = Trainer::new(cfg)
//!     .observer(observe::MetricsLog)
//!     .run()?;
//! println!("{:?}: best {:?}", summary.outcome, summary.best);
//! # Ok::<(), hondo::Error>(())
//! ```

#![warn(missing_docs)]

pub mod allocator;
pub(crate) mod budget;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
mod error;
pub mod evaluate;
pub mod export;
pub(crate) mod file;
pub mod info;
pub mod metrics;
pub mod models;
pub mod observe;
pub mod ops;
pub mod plot;
pub mod predict;
pub(crate) mod run_dir;
pub(crate) mod shim;
pub mod tensor_io;
pub mod train;
pub mod weights;

pub use config::Config;
pub use error::{error_chain, Error, Result};
pub use models::ModelSpec;
pub use observe::Observer;
pub use train::{Outcome, Summary, Trainer};
