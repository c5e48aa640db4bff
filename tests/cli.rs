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

#[test]
fn shipped_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/dragoman.yaml");
    let keys = [
        ("OPENAI_API_KEY", "sk-x"),
        ("ANTHROPIC_API_KEY", "ant-x"),
        ("GEMINI_API_KEY", "gem-x"),
    ];
    let (ok, out) = run_dragoman(&["-t", "-c", path], &keys);
    assert!(ok, "{out}");
    // Without the keys, the file names the first unset variable.
    let (ok, out) = run_dragoman(&["-t", "-c", path], &[]);
    assert!(!ok);
    assert!(out.contains("_API_KEY"), "{out}");
}

#[tokio::test]
async fn default_config_serves_the_providers_whose_keys_are_set() {
    // The embedded default listens on 127.0.0.1:8080 (admin 9090).
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dragoman"))
        .env_remove("OPENAI_API_KEY")
        .env_remove("GEMINI_API_KEY")
        .env("ANTHROPIC_API_KEY", "ant-default-key")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let list: serde_json::Value = loop {
        assert!(guard.0.try_wait().unwrap().is_none(), "dragoman exited");
        if let Ok(resp) = client().get("http://127.0.0.1:8080/v1/models").send().await {
            break resp.json().await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "default listener never came up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"claude-3-5-haiku-latest"), "{ids:?}");
    assert!(
        !ids.iter()
            .any(|id| id.starts_with("gpt") || id.starts_with("gemini")),
        "{ids:?}"
    );
    let health = client()
        .get("http://127.0.0.1:9090/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    drop(guard);
}

#[test]
fn a_bad_pingora_setting_is_named_without_printing_the_file() {
    let path = write_config(
        "pingora-type",
        "threads: \"4\"\nproviders:\n  p: { kind: openai, api_key: sk-live-must-not-print }\nmodels:\n  m: { provider: p }\n",
    );
    for args in [&["-t", "-c"][..], &["-c"][..]] {
        let mut args = args.to_vec();
        args.push(path.to_str().unwrap());
        let (ok, out) = run_dragoman(&args, &[]);
        assert!(!ok, "{out}");
        assert!(out.contains("threads"), "{out}");
        assert!(
            !out.contains("sk-live-must-not-print"),
            "the key was printed: {out}"
        );
    }
}
