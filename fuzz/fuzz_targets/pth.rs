#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hondo_fuzz::pth(data));
