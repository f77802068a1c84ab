//! hondo's CPU tensor allocator (`csrc/cpu_allocator.cpp`), installed first thing in `main`.
//!
//! libtorch's default CPU allocator is glibc's `malloc`. A training step frees and
//! re-allocates the same activation and gradient buffers every step; glibc serves buffers
//! of tens of MiB with a fresh `mmap`, returns them with `munmap` on free and trims the
//! heap, so the kernel hands every step new pages and zeroes them first. On the small CNN
//! and ResNet-50 a profile showed ~18% of each step in the kernel's `clear_page_erms` and
//! 40-50k page faults per step, in PyTorch and in hondo alike.
//!
//! The caching allocator keeps large blocks (>= 1 MiB) after they are freed and hands them
//! out again, so from the second step on a step takes (almost) no page faults. Idle cached
//! memory is capped at twice the largest amount ever in use. Telling glibc to keep freed memory
//! (`mallopt`: no mmap, no trim) removed the faults as well but fragmented the heap: +70%
//! peak memory on the small CNN. Measured in BENCHMARKS.md.
//!
//! `HONDO_MALLOC=system` keeps libtorch's default allocator.

mod ffi {
    extern "C" {
        pub fn hondo_cpu_allocator_install();
        pub fn hondo_cpu_allocator_stats(in_use: *mut usize, cached: *mut usize, peak: *mut usize);
        pub fn hondo_cpu_allocator_empty_cache();
    }
}

fn enabled() -> bool {
    std::env::var("HONDO_MALLOC").as_deref() != Ok("system")
}

/// Installs the caching allocator as libtorch's CPU allocator, unless `HONDO_MALLOC=system`.
/// Call before creating tensors; tensors made before keep their own deleter and stay valid.
pub fn install() {
    if enabled() {
        // SAFETY: registers a process-lifetime allocator object with libtorch.
        unsafe { ffi::hondo_cpu_allocator_install() }
    }
}

/// One line for `hondo info`.
pub fn policy() -> &'static str {
    if enabled() {
        "caching (large blocks reused)"
    } else {
        "libtorch default (HONDO_MALLOC=system)"
    }
}

/// Bytes in the caching allocator's large blocks (>= 1 MiB, whole pages); small
/// allocations go to libtorch's `alloc_cpu` and are not counted. All zero unless
/// [`install`]ed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Bytes handed out to tensors and not yet freed.
    pub in_use: usize,
    /// Bytes freed by tensors and kept for reuse (at most twice `peak`).
    pub cached: usize,
    /// The most bytes ever in use at once.
    pub peak: usize,
}

/// The allocator's counters now.
pub fn stats() -> Stats {
    let (mut in_use, mut cached, mut peak) = (0, 0, 0);
    // SAFETY: the shim writes three integers through valid pointers under its lock.
    unsafe { ffi::hondo_cpu_allocator_stats(&mut in_use, &mut cached, &mut peak) };
    Stats {
        in_use,
        cached,
        peak,
    }
}

/// Returns cached idle blocks to the system (between phases whose buffers differ).
pub fn empty_cache() {
    // SAFETY: only idle blocks, owned by the allocator, are unmapped.
    unsafe { ffi::hondo_cpu_allocator_empty_cache() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn blocks_hold_their_data_through_reuse() {
        // Other tests run in this process too: only assertions that hold whatever they do.
        install();
        for round in 0..3 {
            // 4 MiB blocks: large, freed and handed out again in the next round.
            let a = Tensor::full([1 << 20], 1.5, (Kind::Float, tch::Device::Cpu));
            assert!(stats().in_use >= 4 << 20, "round {round}: {:?}", stats());
            let b = Tensor::zeros([1 << 20], (Kind::Float, tch::Device::Cpu));
            assert_eq!(
                a.sum(Kind::Double).double_value(&[]),
                1.5 * (1 << 20) as f64
            );
            assert_eq!(b.sum(Kind::Double).double_value(&[]), 0.0);
        }
        let small = Tensor::arange(10, (Kind::Int64, tch::Device::Cpu));
        assert_eq!(small.sum(Kind::Int64).int64_value(&[]), 45);
        assert_eq!(
            Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)).numel(),
            0
        );
        empty_cache();
    }
}
