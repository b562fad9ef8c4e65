//! The config loader: any text is accepted or refused with errors that each carry a key path
//! (or a line:column for syntax errors), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = weir::config::parse(text, "fuzz.toml") {
        assert!(!errors.errors.is_empty(), "refused without a reason");
        for e in &errors.errors {
            assert!(!e.path.is_empty(), "an error without a path: {}", e.message);
        }
    }
});
