//! Config parsing and validation (`config::Config::from_toml_str`) on any TOML text,
//! with one environment variable set. Properties: a config that loads renders
//! (`to_toml_redacted`, what `config show` prints) to TOML that loads again to the same
//! server, storage, log and mirror settings.
#![no_main]

use agent_registry::config::Config;
use libfuzzer_sys::fuzz_target;

fn env(name: &str) -> Option<String> {
    (name == "FUZZ_VAR").then(|| "fuzz-value".to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // TLS and htpasswd paths are opened while validating: keep the fuzzer off device
    // files that never end (`/dev/zero`) or block (`/dev/stdin`).
    if text.contains("/dev") || text.contains("/proc") || text.contains('\\') {
        return;
    }
    let config = match Config::from_toml_str(text, "fuzz", &env) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let shown = config.to_toml_redacted();
    let back = match Config::from_toml_str(&shown, "shown", &|_| None) {
        Ok(b) => b,
        Err(e) => panic!(
            "the rendered config does not load: {e}\n--- input\n{text}\n--- rendered\n{shown}"
        ),
    };
    assert_eq!(back.server, config.server, "{shown}");
    assert_eq!(back.storage, config.storage, "{shown}");
    assert_eq!(back.log, config.log, "{shown}");
    assert_eq!(back.mirror, config.mirror, "{shown}");
});
