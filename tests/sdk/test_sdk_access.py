"""Gateway keys and rate limits as the official OpenAI and Anthropic Python SDKs see them: each SDK
sends its key its own way (OpenAI: Authorization: Bearer; Anthropic: x-api-key) and gets the
gateway's 401, 403 and 429 as its own exception types. Started by tests/sdk_clients.rs with the
gateway's address in DRAGOMAN_URL."""

import os
import unittest

import anthropic
import openai

GATEWAY = os.environ["DRAGOMAN_URL"]
HI = [{"role": "user", "content": "hi"}]


def oai(key):
    return openai.OpenAI(base_url=GATEWAY + "/v1", api_key=key, max_retries=0, timeout=20)


def ant(key):
    return anthropic.Anthropic(base_url=GATEWAY, api_key=key, max_retries=0, timeout=20)


class Keys(unittest.TestCase):
    def test_unknown_keys_are_authentication_errors(self):
        with self.assertRaises(openai.AuthenticationError) as e:
            oai("wrong").chat.completions.create(model="gpt", messages=HI)
        self.assertEqual(e.exception.code, "invalid_api_key")
        with self.assertRaises(anthropic.AuthenticationError):
            ant("wrong").messages.create(model="claude", max_tokens=10, messages=HI)

    def test_a_model_the_key_may_not_use_is_permission_denied(self):
        with self.assertRaises(openai.PermissionDeniedError):
            oai("k-narrow").chat.completions.create(model="claude", messages=HI)
        with self.assertRaises(anthropic.PermissionDeniedError):
            ant("k-narrow").messages.create(model="claude", max_tokens=10, messages=HI)
        ids = [m.id for m in oai("k-narrow").models.list()]
        self.assertEqual(ids, ["gpt"])

    def test_a_key_over_its_limit_gets_rate_limit_errors_with_retry_after(self):
        client = oai("k-limited")
        raw = client.chat.completions.with_raw_response.create(model="gpt", messages=HI)
        self.assertEqual(raw.headers["x-ratelimit-limit-requests"], "2")
        self.assertEqual(raw.headers["x-ratelimit-remaining-requests"], "1")
        raw.parse()
        ant("k-limited").messages.create(model="claude", max_tokens=10, messages=HI)
        with self.assertRaises(openai.RateLimitError) as e:
            client.chat.completions.create(model="gpt", messages=HI)
        self.assertGreaterEqual(int(e.exception.response.headers["retry-after"]), 1)
        with self.assertRaises(anthropic.RateLimitError) as e:
            ant("k-limited").messages.create(model="claude", max_tokens=10, messages=HI)
        self.assertEqual(e.exception.body["error"]["type"], "rate_limit_error")

    def test_a_counted_stream_hides_the_usage_chunk_it_did_not_ask_for(self):
        raw = oai("k-tokens").chat.completions.with_raw_response.create(
            model="gpt", messages=HI, stream=True, max_tokens=100)
        self.assertEqual(raw.headers["x-ratelimit-limit-tokens"], "100000")
        chunks = list(raw.parse())
        self.assertTrue(chunks)
        self.assertTrue(all(c.choices for c in chunks), "a usage-only chunk reached the client")
        self.assertTrue(all(c.usage is None for c in chunks))
        # Asked for, it comes.
        stream = oai("k-tokens").chat.completions.create(
            model="gpt", messages=HI, stream=True, stream_options={"include_usage": True})
        last = list(stream)[-1]
        self.assertEqual(last.usage.prompt_tokens, 10)


if __name__ == "__main__":
    unittest.main()
