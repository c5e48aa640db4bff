//! The command line: `-t` validates the whole file and names the offending key.
mod common;
use common::*;

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("dragoman-cli-{}-{name}.yaml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn test_flag_accepts_a_valid_file() {
    let path = write_config(
        "valid",
        "threads: 4\nlisten: 127.0.0.1:18080\nproviders:\n  p: { kind: anthropic, api_key: \"${MY_KEY}\" }\nmodels:\n  m: { provider: p }\n",
    );
    let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[("MY_KEY", "k")]);
    assert!(ok, "{out}");
    assert!(out.contains("valid"), "{out}");
}

#[test]
fn test_flag_names_the_offending_key() {
    for (name, text, key) in [
        (
            "provider",
            "providers: {}\nmodels:\n  m: { provider: ghost }\n",
            "models.m.provider",
        ),
        (
            "kind",
            "providers:\n  p: { kind: openia, api_key: k }\n",
            "providers.p.kind",
        ),
        (
            "typo",
            "providers:\n  p: { kind: openai, api_key: k, endpionts: [] }\n",
            "endpionts",
        ),
        (
            "env",
            "providers:\n  p: { kind: openai, api_key: \"${DRAGOMAN_UNSET_VAR}\" }\n",
            "providers.p.api_key",
        ),
        ("listen", "listen: not-an-address\n", "listen"),
        ("yaml", "providers: [\n", "invalid YAML"),
    ] {
        let path = write_config(name, text);
        let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[]);
        assert!(!ok, "{name} should fail: {out}");
        assert!(out.contains(key), "{name}: expected `{key}` in: {out}");
        if name == "env" {
            assert!(out.contains("DRAGOMAN_UNSET_VAR"), "{out}");
        }
    }
}

#[test]
fn test_flag_never_prints_the_key() {
    let path = write_config(
        "secret",
        "providers:\n  p: { kind: openai, api_key: sk-very-secret-1234, endpoints: [\"ftp://x\"] }\n",
    );
    let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[]);
    assert!(!ok);
    assert!(out.contains("providers.p.endpoints[0]"), "{out}");
    assert!(!out.contains("sk-very-secret-1234"), "{out}");
}
