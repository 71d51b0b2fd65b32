//! Untrusted bytes into the LocationFix decoder: any input must give Ok or Err, never a
//! panic, an abort or an unbounded allocation. `cargo +nightly fuzz run decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let schema = locus_schemas::location_schema();
    let _ = locus_schemas::decode_with_schema(&schema, data);
});
