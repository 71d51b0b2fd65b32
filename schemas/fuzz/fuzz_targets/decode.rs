//! Untrusted bytes into both LocationFix decoders (the generic one and the direct one of
//! `wire`): any input must give Ok or Err, never a panic, an abort or an unbounded
//! allocation, and both must agree. `cargo +nightly fuzz run decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let schema = locus_schemas::location_schema();
    let generic = locus_schemas::decode_with_schema(&schema, data).ok();
    if data.len() >= 5 && data[0] == 0 {
        assert_eq!(locus_schemas::wire::read_fix(&data[5..]).ok(), generic);
    }
});
