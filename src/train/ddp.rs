//! The trainer's side of data-parallel training (several processes launched by torchrun,
//! srun or `hondo train --nproc`): what PyTorch's `DistributedDataParallel` does around a
//! step, on [`crate::dist`]'s c10d group and DDP's C++ Reducer.
//!
//! - at start: the effective config is the same on every rank (a hash is compared), rank 0
//!   picks the run directory (and, in a restarted attempt, whether to resume), and rank 0's
//!   parameters, buffers and EMA weights overwrite every rank's (after pretrained weights
//!   and `--resume` are loaded);
//! - each step: rank 0's buffers (BatchNorm statistics) before the forward pass; on the
//!   micro-batch that ends an accumulation window, the Reducer averages the gradients in
//!   buckets during backward (the others accumulate locally, as `no_sync`); one small
//!   all-reduce agrees on skipping the update (a non-finite loss on any rank) and on
//!   stopping (a signal on any rank), so every rank steps, skips and stops together;
//! - each epoch: training and validation counts are summed over the ranks (exact metrics,
//!   not averages of averages), and the ranks' weights are checked to be bit-identical.
//!
//! Only rank 0 writes (run directory, checkpoints, metrics, observers).

use crate::dist::{GroupOptions, ProcessGroup, Reducer, World};
use anyhow::{bail, Context};
use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::sync::Arc;
use std::time::Duration;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// The store key (outside any attempt's prefix) where rank 0 leaves the run directory, so
/// a restarted attempt of the same torchrun job resumes it.
const RUN_DIR_KEY: &str = "hondo/run_dir";

/// A joined data-parallel job and the Reducer over the model's trainable parameters.
pub(crate) struct Ddp {
    group: Arc<ProcessGroup>,
    world: World,
    bucket_mib: f64,
    reducer: Option<Reducer>,
    /// The parameters the Reducer was built over (it is rebuilt when unfreezing changes
    /// them).
    reduced: Vec<Tensor>,
    /// Buffers (BatchNorm statistics): broadcast from rank 0 before each forward pass.
    buffers: Vec<Tensor>,
    /// Nanoseconds of forward and backward compute in synchronised steps, summed (the
    /// Reducer's timers).
    compute_ns: i64,
    /// Nanoseconds those steps waited for gradient communication after their backward
    /// compute ended (communication not overlapped with it), summed.
    wait_ns: i64,
}

impl Ddp {
    /// Joins the job `world` describes; a restarted attempt (torchrun `--max-restarts`)
    /// uses its own key prefix so it never reads the previous attempt's keys.
    pub(crate) fn join(world: World, timeout_s: f64, bucket_mib: f64) -> anyhow::Result<Ddp> {
        let opts = GroupOptions {
            host: world.master_addr.clone(),
            port: world.master_port,
            rank: world.rank,
            world: world.size,
            is_server: world.rank == 0 && !world.agent_store,
            timeout: Duration::from_secs_f64(timeout_s),
            prefix: format!("default_pg/hondo-attempt-{}", world.restart_count),
            interface: world.interface.clone(),
        };
        let group = ProcessGroup::new(&opts).with_context(|| {
            format!(
                "data-parallel rendezvous (rank {} of {}; train.dist_timeout_s = {timeout_s})",
                world.rank, world.size
            )
        })?;
        Ok(Ddp {
            group: Arc::new(group),
            world,
            bucket_mib,
            reducer: None,
            reduced: Vec::new(),
            buffers: Vec::new(),
            compute_ns: 0,
            wait_ns: 0,
        })
    }

    pub(crate) fn rank(&self) -> usize {
        self.world.rank
    }

    pub(crate) fn size(&self) -> usize {
        self.world.size
    }

    pub(crate) fn is_main(&self) -> bool {
        self.world.rank == 0
    }

    pub(crate) fn world(&self) -> &World {
        &self.world
    }

    pub(crate) fn group(&self) -> &Arc<ProcessGroup> {
        &self.group
    }

    /// Whether `hash` is the same on every rank (every rank gets the same answer).
    fn same_everywhere(&self, hash: u64) -> anyhow::Result<bool> {
        // max(h) and max(!h) = !min(h): equal on all ranks iff max(h) == min(h).
        let t = Tensor::from_slice(&[hash as i64, !hash as i64]);
        self.group.all_reduce_max(&t)?;
        let v = Vec::<i64>::try_from(&t)?;
        Ok(v[0] == !v[1])
    }

    /// Refuses to train when the ranks were given different effective configs.
    pub(crate) fn check_same_config(&self, toml: &str) -> anyhow::Result<()> {
        let mut h = DefaultHasher::new();
        h.write(toml.as_bytes());
        if !self.same_everywhere(h.finish())? {
            bail!(
                "the ranks of this data-parallel job were given different configs (rank {}'s \
                 effective config hashes to {:016x}): start every rank with the same config \
                 file and --set overrides",
                self.rank(),
                h.finish()
            );
        }
        Ok(())
    }

    /// Rank 0's `value` on every rank.
    pub(crate) fn share(&self, value: &str) -> anyhow::Result<String> {
        let len = Tensor::from_slice(&[value.len() as i64]);
        self.group.broadcast(&[&len], 0)?;
        let n = i64::try_from(&len)? as usize;
        let mut bytes = value.as_bytes().to_vec();
        bytes.resize(n, 0);
        let t = Tensor::from_slice(&bytes);
        self.group.broadcast(&[&t], 0)?;
        let bytes = Vec::<u8>::try_from(&t)?;
        String::from_utf8(bytes).context("rank 0's value is not UTF-8")
    }

    /// In a restarted attempt: the run directory an earlier attempt of this job left in the
    /// store (rank 0 only; `None` on the other ranks and in a first attempt).
    pub(crate) fn earlier_run_dir(&self) -> anyhow::Result<Option<String>> {
        if !self.is_main() || self.world.restart_count == 0 {
            return Ok(None);
        }
        let v = self.group.store_get(RUN_DIR_KEY)?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Leaves the run directory in the store for a restarted attempt (rank 0).
    pub(crate) fn remember_run_dir(&self, dir: &str) -> anyhow::Result<()> {
        if self.is_main() {
            self.group.store_set(RUN_DIR_KEY, dir.as_bytes())?;
        }
        Ok(())
    }

    /// Rank 0's values of every tensor of `vs` (sorted by name: the same order everywhere).
    pub(crate) fn broadcast_vars(&self, vs: &VarStore) -> anyhow::Result<()> {
        let tensors = sorted(vs);
        let refs: Vec<&Tensor> = tensors.iter().collect();
        self.group
            .broadcast(&refs, 0)
            .context("sharing rank 0's weights")?;
        Ok(())
    }

    /// (Re)builds the Reducer over `vs`'s parameters that currently require a gradient, in
    /// creation order (the same on every rank), when they changed (unfreezing); notes the
    /// buffers.
    pub(crate) fn attach(&mut self, vs: &VarStore) -> anyhow::Result<()> {
        let trainable = vs.trainable_variables();
        let params: Vec<Tensor> = trainable
            .iter()
            .filter(|t| t.requires_grad())
            .map(|t| t.shallow_clone())
            .collect();
        let same = params.len() == self.reduced.len()
            && params
                .iter()
                .zip(&self.reduced)
                .all(|(a, b)| a.is_set_to(b));
        if self.reducer.is_none() || !same {
            self.reducer = None;
            if !params.is_empty() {
                let refs: Vec<&Tensor> = params.iter().collect();
                self.reducer = Some(Reducer::new(&self.group, &refs, self.bucket_mib)?);
            }
            self.reduced = params;
        }
        self.buffers = sorted(vs)
            .into_iter()
            .filter(|t| !super::param_groups::is_parameter(&trainable, t))
            .collect();
        Ok(())
    }

    /// Before a training forward pass: rank 0's buffers; when this micro-batch's backward
    /// is the one that all-reduces (`sync`), the Reducer is readied for it.
    pub(crate) fn before_forward(&mut self, sync: bool) -> anyhow::Result<()> {
        self.broadcast_buffers()?;
        if let (true, Some(r)) = (sync, &self.reducer) {
            r.rebuild_buckets()?;
            r.prepare()?;
        }
        Ok(())
    }

    /// After a synchronised backward: the Reducer's timers, summed.
    pub(crate) fn after_backward(&mut self) -> anyhow::Result<()> {
        if let Some(r) = &self.reducer {
            let [forward, backward, comm, overlap] = r.backward_stats()?;
            self.compute_ns += forward.max(0) + backward.max(0);
            self.wait_ns += (comm - overlap).max(0);
        }
        Ok(())
    }

    /// Rank 0's buffers on every rank (before validation and each forward pass).
    pub(crate) fn broadcast_buffers(&self) -> anyhow::Result<()> {
        if self.buffers.is_empty() {
            return Ok(());
        }
        let refs: Vec<&Tensor> = self.buffers.iter().collect();
        self.group
            .broadcast(&refs, 0)
            .context("sharing rank 0's BatchNorm statistics")?;
        Ok(())
    }

    /// Agrees across ranks on an update: `skip` (a float scalar, non-zero when this rank's
    /// window had a non-finite loss) becomes the maximum over the ranks, and the stop code
    /// the largest any rank has (0: none).
    pub(crate) fn agree(
        &self,
        skip: &Tensor,
        stop: Option<i32>,
    ) -> anyhow::Result<(Tensor, Option<i32>)> {
        let flags = Tensor::stack(
            &[
                skip.to_device(tch::Device::Cpu)
                    .to_kind(Kind::Double)
                    .reshape([1]),
                Tensor::from_slice(&[f64::from(stop.unwrap_or(0))]),
            ],
            0,
        )
        .reshape([2]);
        self.group.all_reduce_max(&flags)?;
        let v = Vec::<f64>::try_from(&flags)?;
        let agreed = Tensor::from(v[0] as f32).to_device(skip.device());
        Ok((agreed, (v[1] > 0.0).then_some(v[1] as i32)))
    }

    /// The stop code any rank has (at an epoch's end).
    pub(crate) fn agree_stop(&self, stop: Option<i32>) -> anyhow::Result<Option<i32>> {
        Ok(self.agree(&Tensor::from(0f32), stop)?.1)
    }

    /// `values` summed over the ranks.
    pub(crate) fn sum(&self, values: &[f64]) -> anyhow::Result<Vec<f64>> {
        let t = Tensor::from_slice(values);
        self.group.all_reduce_sum(&t)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Fails unless every rank holds bit-identical parameters and buffers (checked each
    /// epoch: ranks that drifted apart would train different models).
    pub(crate) fn check_identical(&self, vs: &VarStore, epoch: usize) -> anyhow::Result<()> {
        let mut h = DefaultHasher::new();
        for t in sorted(vs) {
            let flat = t
                .to_device(tch::Device::Cpu)
                .contiguous()
                .f_reshape([-1])?
                .f_view_dtype(Kind::Uint8)?;
            h.write(&Vec::<u8>::try_from(&flat)?);
        }
        if !self.same_everywhere(h.finish())? {
            bail!(
                "after epoch {}: the ranks' weights are no longer identical (a bug, or a \
                 model whose forward pass differs between processes)",
                epoch + 1
            );
        }
        Ok(())
    }

    /// The share of synchronised steps' forward + backward time spent waiting for the
    /// gradients' all-reduce (what did not overlap with backward compute), so far.
    pub(crate) fn comm_share(&self) -> Option<f64> {
        let total = self.compute_ns + self.wait_ns;
        (total > 0).then(|| self.wait_ns as f64 / total as f64)
    }
}

/// `vs`'s tensors sorted by name.
fn sorted(vs: &VarStore) -> Vec<Tensor> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().map(|(_, t)| t).collect()
}
