#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dpop_core::internal::fuzzing::canonical_target(data));
