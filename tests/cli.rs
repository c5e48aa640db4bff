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
    assert!(!out.contains("left out"), "{out}");
    // Its providers are optional: any one key (or any two) is enough, and each provider whose
    // key is missing or empty is named, with its variable and its models.
    let models = |p: &str| match p {
        "openai" => "gpt-4o-mini",
        "anthropic" => "claude-haiku",
        _ => "gemini-flash",
    };
    for set in [&[0][..], &[1], &[2], &[0, 2]] {
        let env: Vec<(&str, &str)> = keys
            .iter()
            .enumerate()
            .map(|(i, (var, value))| (*var, if set.contains(&i) { *value } else { "" }))
            .collect();
        let (ok, out) = run_dragoman(&["-t", "-c", path], &env);
        assert!(ok, "{set:?}: {out}");
        for (i, provider) in ["openai", "anthropic", "gemini"].iter().enumerate() {
            let named = out.contains(&format!("providers.{provider}: left out"));
            assert_eq!(named, !set.contains(&i), "{set:?} {provider}: {out}");
            if named {
                assert!(
                    out.contains(keys[i].0) && out.contains(models(provider)),
                    "{out}"
                );
            }
        }
        assert!(!out.contains("sk-x") && !out.contains("gem-x"), "{out}");
    }
    // A variable left unset (not only empty) is the same.
    let (ok, out) = run_dragoman(&["-t", "-c", path], &[("ANTHROPIC_API_KEY", "ant-x")]);
    assert!(ok, "{out}");
    // With none, nothing would be served: that is an error naming the three variables.
    let (ok, out) = run_dragoman(&["-t", "-c", path], &[]);
    assert!(!ok, "{out}");
    for (var, _) in keys {
        assert!(out.contains(var), "{out}");
    }
}

/// Without `optional: true`, a provider's unset variable stays an error (a typo in a variable's
/// name must not turn a provider off unseen).
#[test]
fn only_an_optional_provider_is_left_out_when_its_variable_is_unset() {
    let text = "providers:\n  a: { kind: anthropic, api_key: \"${DRAGOMAN_TEST_A}\" }\n  \
                o: { kind: openai, api_key: \"${DRAGOMAN_TEST_O}\", optional: true }\n\
                models:\n  ma: { provider: a }\n  mo: { provider: o }\n";
    let path = write_config("optional", text);
    let path = path.to_str().unwrap();
    let (ok, out) = run_dragoman(&["-t", "-c", path], &[("DRAGOMAN_TEST_A", "k")]);
    assert!(ok, "{out}");
    assert!(out.contains("providers.o: left out"), "{out}");
    assert!(
        out.contains("DRAGOMAN_TEST_O") && out.contains("mo"),
        "{out}"
    );
    let (ok, out) = run_dragoman(&["-t", "-c", path], &[("DRAGOMAN_TEST_O", "k")]);
    assert!(!ok, "{out}");
    assert!(out.contains("providers.a.api_key"), "{out}");
    assert!(out.contains("DRAGOMAN_TEST_A"), "{out}");
}

#[tokio::test]
async fn default_config_serves_the_providers_whose_keys_are_set() {
    // The embedded default listens on 127.0.0.1:8080 (admin 9090): say so if they are taken
    // (a gateway from the README's Quick start, still running) rather than "dragoman exited".
    for port in [8080, 9090] {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            panic!("this test needs 127.0.0.1:{port}, which is taken ({e}): is a gateway running?");
        }
    }
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

/// Values that would overflow (`Instant + Duration` panics), exhaust memory (Pingora's weighted
/// round robin holds one slot per unit of weight) or leave a listener without its port: refused
/// by `-t` and at start, naming the key, never a panic.
#[test]
fn values_that_would_overflow_or_exhaust_memory_are_refused_naming_the_key() {
    let port = free_port();
    let provider = |extra: &str| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: null\nproviders:\n  p: {{ kind: openai, api_key: k{extra} }}\nmodels:\n  m: {{ provider: p }}\n"
        )
    };
    let model = |extra: &str| {
        format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: null\nproviders:\n  p: {{ kind: openai, api_key: k }}\nmodels:\n  m: {{ provider: p{extra} }}\n"
        )
    };
    let endpoint = |weight: &str| {
        provider(&format!(
            ", endpoints: [{{ url: \"http://127.0.0.1:1/v1\", weight: {weight} }}]"
        ))
    };
    let top = |extra: &str| format!("listen: 127.0.0.1:{port}\nadmin_listen: null\n{extra}\n");
    let cases = [
        (provider(", timeout: 1e20"), "providers.p.timeout"),
        (provider(", timeout: 1e15"), "providers.p.timeout"),
        (
            provider(", timeout: \"100000000000000000000000s\""),
            "providers.p.timeout",
        ),
        (provider(", timeout: 25h"), "providers.p.timeout"),
        (provider(", timeout: -1"), "providers.p.timeout"),
        (provider(", timeout: \"-5s\""), "providers.p.timeout"),
        (provider(", timeout: .nan"), "providers.p.timeout"),
        (provider(", timeout: .inf"), "providers.p.timeout"),
        (
            provider(", retry_backoff: 1e19"),
            "providers.p.retry_backoff",
        ),
        (
            provider(", stream_idle_timeout: 1e20"),
            "providers.p.stream_idle_timeout",
        ),
        (
            provider(", circuit_breaker: { cooldown: 1e20 }"),
            "providers.p.circuit_breaker.cooldown",
        ),
        (
            provider(", health_check: { interval: 1e20 }"),
            "providers.p.health_check.interval",
        ),
        (model(", timeout: 1e20"), "models.m.timeout"),
        (model(", total_timeout: 1e20"), "models.m.total_timeout"),
        (model(", hedge: { after: 1e20 }"), "models.m.hedge.after"),
        (endpoint("1e10"), "providers.p.endpoints[0]"),
        (endpoint("10000000000"), "providers.p.endpoints[0]"),
        (endpoint("1001"), "providers.p.endpoints[0]"),
        (endpoint("0"), "providers.p.endpoints[0]"),
        (
            provider(", max_attempts: 4294967295"),
            "providers.p.max_attempts",
        ),
        (provider(", max_attempts: 0"), "providers.p.max_attempts"),
        (
            model(", max_upstream_calls: 1000000"),
            "models.m.max_upstream_calls",
        ),
        (
            model(", hedge: { after: 1s, max: 4294967295 }"),
            "models.m.hedge.max",
        ),
        (top("max_request_bytes: 1e20"), "max_request_bytes"),
        (
            top("max_request_bytes: 18446744073709551615"),
            "max_request_bytes",
        ),
        (top("max_request_bytes: 0"), "max_request_bytes"),
        (
            top("max_response_bytes: 1099511627776"),
            "max_response_bytes",
        ),
        (top("max_response_bytes: 0"), "max_response_bytes"),
        (top("threads: 0"), "threads"),
        (top("threads: 100000"), "threads"),
        (
            format!("listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{port}\n"),
            "admin_listen",
        ),
        (
            format!("listen: 127.0.0.1:{port}\nadmin_listen: 0.0.0.0:{port}\n"),
            "admin_listen",
        ),
        (
            format!("listen: \"[::1]:{port}\"\nadmin_listen: \"[::]:{port}\"\n"),
            "admin_listen",
        ),
        (
            format!("listen: [127.0.0.1:{port}, 127.0.0.1:{port}]\nadmin_listen: null\n"),
            "listen[1]",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = write_config(&format!("limits-{i}"), text);
        for args in [&["-t", "-c"][..], &["-c"][..]] {
            let mut args = args.to_vec();
            args.push(path.to_str().unwrap());
            let (ok, out) = run_dragoman_within(&args, &[], std::time::Duration::from_secs(20));
            assert_eq!(ok, Some(false), "{args:?} should fail:\n{text}\n{out}");
            assert!(
                out.contains(&format!("{key}:")),
                "expected `{key}` in: {out}\n{text}"
            );
            assert!(!out.contains("panicked"), "{text}\n{out}");
        }
        let _ = std::fs::remove_file(&path);
    }
    // The largest values allowed still load.
    let path = write_config(
        "limits-ok",
        &format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{}\nmax_request_bytes: 1073741824\nedge: {{ max_buffered_bytes: 2147483648 }}\nproviders:\n  p: {{ kind: openai, api_key: k, timeout: 24h, max_attempts: 100, endpoints: [{{ url: \"http://127.0.0.1:1/v1\", weight: 1000 }}] }}\nmodels:\n  m: {{ provider: p, max_upstream_calls: 100, hedge: {{ after: 86400, max: 100 }} }}\n",
            free_port()
        ),
    );
    let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[]);
    assert!(ok, "{out}");
}

/// Pingora would retry a port in use for 30 s, then run on without that listener: the start
/// fails at once instead, naming the key. `-t` does not bind: it runs beside the instance it is
/// about to replace, which holds the ports.
#[test]
fn a_port_in_use_stops_the_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let free = free_port();
    for (key, listen, admin) in [("listen", busy, free), ("admin_listen", free, busy)] {
        let path = write_config(
            &format!("in-use-{key}"),
            &format!("listen: 127.0.0.1:{listen}\nadmin_listen: 127.0.0.1:{admin}\n"),
        );
        let path = path.to_str().unwrap();
        let started = std::time::Instant::now();
        let (ok, out) = run_dragoman_within(&["-c", path], &[], std::time::Duration::from_secs(20));
        assert_eq!(ok, Some(false), "{key}: {out}");
        assert!(
            out.contains(&format!("{key}: cannot listen on 127.0.0.1:{busy}")),
            "{key}: {out}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{key}: the start took {:?} to fail",
            started.elapsed()
        );
        let (ok, out) = run_dragoman(&["-t", "-c", path], &[]);
        assert!(ok, "{out}");
    }
    drop(taken);
}

/// `listen: localhost:PORT` and `admin_listen: localhost:PORT` are resolved when the file is
/// loaded (to 127.0.0.1): `-t` accepts them, and the gateway serves on both.
#[tokio::test]
async fn listeners_may_be_host_names() {
    let (port, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("dragoman-cli-{}-names", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_config(
        "names",
        &format!(
            "pid_file: {dir}/pid\nupgrade_sock: {dir}/upgrade.sock\n\
             listen: localhost:{port}\nadmin_listen: localhost:{admin}\n",
            dir = dir.display()
        ),
    );
    let (ok, out) = run_dragoman(&["-t", "-c", path.to_str().unwrap()], &[]);
    assert!(ok, "{out}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dragoman"))
        .arg("-c")
        .arg(&path)
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
    let health = loop {
        assert!(guard.0.try_wait().unwrap().is_none(), "dragoman exited");
        if let Ok(resp) = client()
            .get(format!("http://127.0.0.1:{admin}/healthz"))
            .send()
            .await
        {
            break resp;
        }
        assert!(std::time::Instant::now() < deadline, "never came up");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(health.status(), 200);
    let models = client()
        .get(format!("http://127.0.0.1:{port}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    drop(guard);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&path);
}
