#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dpop_gateway::internal::fuzzing::h1_response(data));
