//! Any bytes as a line of driver output: parsed or kept as a log line,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = zerofoot_shared::protocol::parse_line(data);
});
