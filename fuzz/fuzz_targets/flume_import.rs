//! `weir import-flume`: any properties text converts or is refused with a line number, never
//! a panic; a conversion is TOML that the config loader reads (accepts or refuses with paths).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(conversion) = weir::import_flume::convert(text, None) {
        let parsed: Result<toml::Table, _> = conversion.toml.parse();
        assert!(parsed.is_ok(), "not TOML: {}", conversion.toml);
        let _ = weir::config::parse(&conversion.toml, "converted.toml");
    }
});
