"""The official OpenAI and Anthropic Python SDKs as clients of dragoman, unchanged but for their
base URL. Started by tests/sdk_clients.rs, which runs the gateway and a mock provider and passes
their addresses in DRAGOMAN_URL and MOCK_URL."""

import json
import os
import unittest
import urllib.request

import anthropic
import openai

GATEWAY = os.environ["DRAGOMAN_URL"]
MOCK = os.environ["MOCK_URL"]


def mock_next(status, body):
    """Makes the mock provider answer its next request with `status` and JSON `body`."""
    req = urllib.request.Request(
        MOCK + "/_mock/behaviour",
        data=json.dumps({"status": status, "body": body}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(req, timeout=10).read()


def oai():
    return openai.OpenAI(base_url=GATEWAY + "/v1", api_key="client-key", max_retries=0, timeout=20)


def ant():
    return anthropic.Anthropic(base_url=GATEWAY, api_key="client-key", max_retries=0, timeout=20)


ANTHROPIC_TOOL_USE = {
    "id": "msg_01SdkToolUse", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
    "content": [
        {"type": "text", "text": "Checking both."},
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_weather", "input": {"city": "Oslo"}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 30, "output_tokens": 20, "cache_read_input_tokens": 10},
}

OPENAI_TOOL_CALLS = {
    "id": "chatcmpl-sdk", "object": "chat.completion", "created": 1700000000, "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20},
}

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


class OpenAISdk(unittest.TestCase):
    def test_chat_over_anthropic(self):
        r = oai().chat.completions.create(model="claude", messages=[{"role": "user", "content": "hello"}])
        self.assertEqual(r.choices[0].message.content, "mock reply to: hello")
        self.assertEqual(r.choices[0].finish_reason, "stop")
        self.assertEqual(r.usage.total_tokens, 15)

    def test_chat_over_gemini(self):
        r = oai().chat.completions.create(model="gemini", messages=[{"role": "user", "content": "hi g"}])
        self.assertEqual(r.choices[0].message.content, "mock reply to: hi g")

    def test_stream_over_anthropic(self):
        stream = oai().chat.completions.create(
            model="claude", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "stream it"}])
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "mock reply to: stream it")
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, ["stop"])
        self.assertEqual(chunks[-1].usage.completion_tokens, 5)

    def test_stream_over_openai(self):
        stream = oai().chat.completions.create(model="gpt", stream=True, messages=[{"role": "user", "content": "x"}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        self.assertEqual(text, "mock reply to: x")

    def test_tool_calls_over_anthropic(self):
        mock_next(200, ANTHROPIC_TOOL_USE)
        r = oai().chat.completions.create(
            model="claude", tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "weather?"}])
        msg = r.choices[0].message
        self.assertEqual(r.choices[0].finish_reason, "tool_calls")
        self.assertEqual([c.id for c in msg.tool_calls], ["toolu_01A", "toolu_01B"])
        self.assertEqual(json.loads(msg.tool_calls[1].function.arguments), {"city": "Oslo"})
        self.assertEqual(r.usage.prompt_tokens, 40)
        self.assertEqual(r.usage.prompt_tokens_details.cached_tokens, 10)

    def test_errors_are_sdk_exceptions(self):
        with self.assertRaises(openai.NotFoundError) as e:
            oai().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.status_code, 404)
        mock_next(429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}})
        with self.assertRaises(openai.RateLimitError) as e:
            oai().chat.completions.create(model="claude", messages=[{"role": "user", "content": "x"}])
        self.assertIn("slow down", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            oai().chat.completions.create(model="claude", messages="not a list")

    def test_embeddings(self):
        r = oai().embeddings.create(model="gpt", input=["a", "b"])
        self.assertEqual(len(r.data), 2)
        self.assertEqual(len(r.data[0].embedding), 3)
        r = oai().embeddings.create(model="gemini-embed", input="a")
        self.assertTrue(all(isinstance(x, float) for x in r.data[0].embedding))


class AnthropicSdk(unittest.TestCase):
    def test_messages_over_openai(self):
        r = ant().messages.create(model="gpt", max_tokens=50, system="be brief",
                                  messages=[{"role": "user", "content": "hello"}])
        self.assertEqual(r.content[0].text, "mock reply to: hello")
        self.assertEqual(r.stop_reason, "end_turn")
        self.assertEqual(r.usage.output_tokens, 5)

    def test_messages_passthrough_to_anthropic(self):
        r = ant().messages.create(model="claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(r.id, "msg_mock")
        self.assertEqual(r.content[0].text, "mock reply to: hi")

    def test_stream_over_openai_and_gemini(self):
        for model in ["gpt", "gemini"]:
            with ant().messages.stream(model=model, max_tokens=50,
                                       messages=[{"role": "user", "content": "stream"}]) as stream:
                text = "".join(stream.text_stream)
                final = stream.get_final_message()
            self.assertEqual(text, "mock reply to: stream", model)
            self.assertEqual(final.stop_reason, "end_turn", model)

    def test_tool_use_over_openai(self):
        mock_next(200, OPENAI_TOOL_CALLS)
        r = ant().messages.create(
            model="gpt", max_tokens=50,
            tools=[{"name": "get_weather", "description": "Weather",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            messages=[{"role": "user", "content": "weather?"}])
        self.assertEqual(r.stop_reason, "tool_use")
        block = [b for b in r.content if b.type == "tool_use"][0]
        self.assertEqual((block.id, block.name, block.input), ("call_1", "get_weather", {"city": "Paris"}))

    def test_errors_are_sdk_exceptions(self):
        with self.assertRaises(anthropic.NotFoundError):
            ant().messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        mock_next(429, {"error": {"message": "quota", "type": "requests"}})
        with self.assertRaises(anthropic.RateLimitError) as e:
            ant().messages.create(model="gpt", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.status_code, 429)
        mock_next(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        with self.assertRaises(anthropic.APIStatusError) as e:
            ant().messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.status_code, 529)

    def test_count_tokens(self):
        mock_next(200, {"input_tokens": 7})
        r = ant().messages.count_tokens(model="claude", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(r.input_tokens, 7)


if __name__ == "__main__":
    unittest.main()
