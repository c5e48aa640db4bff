//! The official OpenAI and Anthropic Python SDKs against the gateway and a mock provider
//! (tests/sdk/test_sdks.py). `.ci/run` installs the SDKs into a virtualenv and names its Python
//! in DRAGOMAN_PYTHON; without the SDKs this test fails rather than skipping.
mod common;
use common::*;

#[tokio::test]
async fn official_python_sdks_work_unchanged() {
    let mock = MockProvider::start().await.unwrap();
    let url = mock.url();
    let gw = GatewayProcess::start(&format!(
        r#"
providers:
  oai: {{ kind: openai, endpoints: ["{url}/v1"], api_key: k1 }}
  ant: {{ kind: anthropic, endpoints: ["{url}"], api_key: k2 }}
  gem: {{ kind: gemini, endpoints: ["{url}"], api_key: k3 }}
models:
  gpt: {{ provider: oai, model: gpt-4o }}
  claude: {{ provider: ant, model: claude-3-5-haiku-latest }}
  gemini: {{ provider: gem, model: gemini-2.0-flash }}
  gemini-embed: {{ provider: gem, model: text-embedding-004 }}
"#
    ));
    let report = run_sdk_tests("test_sdks.py", &gw, &[("MOCK_URL", &url)]).await;
    assert!(report.contains("OK"), "{report}");
}

#[tokio::test]
async fn official_python_sdks_see_keys_and_limits_as_their_own_errors() {
    let mock = MockProvider::start().await.unwrap();
    let url = mock.url();
    let gw = GatewayProcess::start(&format!(
        r#"
providers:
  oai: {{ kind: openai, endpoints: ["{url}/v1"], api_key: k1 }}
  ant: {{ kind: anthropic, endpoints: ["{url}"], api_key: k2 }}
models:
  gpt: {{ provider: oai, model: gpt-4o }}
  claude: {{ provider: ant, model: claude-3-5-haiku-latest }}
keys:
  narrow: {{ key: k-narrow, models: [gpt] }}
  limited: {{ key: k-limited, limits: {{ rpm: 2 }} }}
  tokens: {{ key: k-tokens, limits: {{ tpm: 100000 }} }}
"#
    ));
    let report = run_sdk_tests("test_sdk_access.py", &gw, &[]).await;
    assert!(report.contains("Ran 4 tests"), "{report}");
    assert!(report.contains("OK"), "{report}");
}
