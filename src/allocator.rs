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
//! Huge pages: once on, new blocks of 2 MiB and more start on a 2 MiB boundary and are
//! advised as transparent huge pages (`madvise(MADV_HUGEPAGE)`, which most distributions'
//! default THP mode, `madvise`, waits for). The convolutions' passes over activations of
//! tens of MiB then miss the TLB far less: 2-9% faster steady-state steps. But the first
//! touch of a fresh 2 MiB page can cost far more than that of recycled 4 KiB pages (on a VM
//! that hands free memory back to its host, ~1 s per GiB of activations), so a short run
//! loses. [`HugePagePlan`] turns them on for a run whose remaining steps will take long
//! enough to repay that once (the trainer asks it after each early step);
//! `HONDO_HUGEPAGES=1` turns them on from the start, `=0` never. Measured in BENCHMARKS.md.
//!
//! `HONDO_MALLOC=system` keeps libtorch's default allocator.

mod ffi {
    extern "C" {
        pub fn hondo_cpu_allocator_install();
        pub fn hondo_cpu_allocator_stats(in_use: *mut usize, cached: *mut usize, peak: *mut usize);
        pub fn hondo_cpu_allocator_empty_cache();
        pub fn hondo_cpu_allocator_huge_pages() -> bool;
        pub fn hondo_cpu_allocator_set_huge_pages(on: bool) -> bool;
        pub fn hondo_cpu_allocator_huge_pages_forced() -> i32;
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

/// Whether new large blocks are advised as transparent huge pages.
pub fn huge_pages() -> bool {
    // SAFETY: reads an atomic flag.
    enabled() && unsafe { ffi::hondo_cpu_allocator_huge_pages() }
}

/// Turns huge pages on or off for blocks mapped from now on, unless `HONDO_HUGEPAGES`
/// decides; returns whether they are on. Blocks already cached keep their pages: call
/// [`empty_cache`] to have the next step map its buffers anew.
pub fn set_huge_pages(on: bool) -> bool {
    // SAFETY: stores an atomic flag.
    enabled() && unsafe { ffi::hondo_cpu_allocator_set_huge_pages(on) }
}

/// Whether `HONDO_HUGEPAGES` (`0` or `1`) decides, so that [`set_huge_pages`] does not.
pub fn huge_pages_forced() -> bool {
    // SAFETY: reads a value computed once from the environment.
    unsafe { ffi::hondo_cpu_allocator_huge_pages_forced() >= 0 }
}

/// The trainer's choice of huge pages for a run: after its first steps it knows what a
/// step takes, and turns them on when the steps left will take long enough to repay their
/// first touch.
#[derive(Debug, Default)]
pub struct HugePagePlan {
    /// When the previous step ended, and its number.
    last: Option<(std::time::Instant, usize)>,
    decided: bool,
}

impl HugePagePlan {
    /// Steps left for which huge pages pay: at least this many seconds of them.
    pub const MIN_SECONDS_LEFT: f64 = 120.0;

    /// Called after each optimizer step (`step` of `total` in the run), on the CPU. Decides
    /// once, after the second step of this process (the first includes its warm-up):
    /// returns `true` when it turned huge pages on (and emptied the cache, so the next step
    /// maps its buffers on them).
    pub fn after_step(&mut self, step: usize, total: usize) -> bool {
        if self.decided {
            return false;
        }
        if !enabled() || huge_pages_forced() || huge_pages() {
            self.decided = true; // nothing to choose: no more work on later steps
            return false;
        }
        let now = std::time::Instant::now();
        match self.last {
            Some((t, s)) if step > s => {
                self.decided = true;
                let per_step = now.duration_since(t).as_secs_f64() / (step - s) as f64;
                if Self::worth_it(total.saturating_sub(step), per_step) {
                    set_huge_pages(true);
                    empty_cache();
                    return true;
                }
                false
            }
            _ => {
                self.last = Some((now, step));
                false
            }
        }
    }

    /// Whether `steps_left` steps of `per_step` seconds repay a step on fresh pages.
    pub fn worth_it(steps_left: usize, per_step: f64) -> bool {
        steps_left as f64 * per_step >= Self::MIN_SECONDS_LEFT
    }
}

/// The kernel's transparent huge page mode (`always`, `madvise` or `never`), if it has one.
fn kernel_thp() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let start = s.find('[')? + 1;
    let end = start + s[start..].find(']')?;
    Some(s[start..end].to_string())
}

/// One line for `hondo info`.
pub fn policy() -> String {
    if !enabled() {
        return "libtorch default (HONDO_MALLOC=system)".into();
    }
    let thp_off = matches!(kernel_thp().as_deref(), None | Some("never"));
    match (huge_pages_forced(), huge_pages()) {
        _ if thp_off => {
            "caching (large blocks reused; the kernel has transparent huge pages off)".into()
        }
        (true, false) => "caching (large blocks reused; huge pages off: HONDO_HUGEPAGES=0)".into(),
        (true, true) => "caching (large blocks reused, on huge pages: HONDO_HUGEPAGES=1)".into(),
        (false, true) => "caching (large blocks reused, on huge pages)".into(),
        (false, false) => {
            "caching (large blocks reused; on huge pages in runs long enough to repay them)".into()
        }
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

    /// The flags of the mapping holding `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        inside = (a..b).contains(&addr);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_string());
                }
            }
        }
        None
    }

    #[test]
    fn huge_pages_pay_only_for_enough_steps_left() {
        assert!(!HugePagePlan::worth_it(8, 1.2)); // one short epoch
        assert!(HugePagePlan::worth_it(1000, 0.2));
        assert!(!HugePagePlan::worth_it(0, 1e9));
        // The plan decides once, from the second step it sees.
        let mut plan = HugePagePlan::default();
        assert!(!plan.after_step(1, 3));
        assert!(!plan.after_step(2, 3));
        assert!(plan.decided || !enabled() || huge_pages_forced() || huge_pages());
    }

    #[test]
    fn large_blocks_start_on_a_huge_page_and_are_advised_as_one() {
        install();
        if !enabled() || huge_pages_forced() && !huge_pages() {
            return; // HONDO_MALLOC=system or HONDO_HUGEPAGES=0 in this test's environment
        }
        assert!(set_huge_pages(true));
        for mib in [2usize, 3, 16] {
            let t = Tensor::zeros([(mib << 20) as i64 / 4], (Kind::Float, tch::Device::Cpu));
            let data = t.data_ptr() as usize;
            // The data follows the block's 64-byte header.
            assert_eq!((data - 64) % (2 << 20), 0, "{mib} MiB at {data:#x}");
            let flags = vm_flags(data).expect("the block's mapping is in /proc/self/smaps");
            assert!(
                flags.split(' ').any(|f| f == "hg"),
                "{mib} MiB: MADV_HUGEPAGE not set: {flags}"
            );
            assert_eq!(t.sum(Kind::Double).double_value(&[]), 0.0);
        }
        // A block under 2 MiB is not padded out to one.
        let t = Tensor::zeros([(1 << 20) / 4 * 3 / 2], (Kind::Float, tch::Device::Cpu));
        let flags = vm_flags(t.data_ptr() as usize).unwrap();
        assert!(!flags.split(' ').any(|f| f == "hg"), "1.5 MiB: {flags}");
        assert!(policy().contains("huge pages"), "{}", policy());
    }
}
