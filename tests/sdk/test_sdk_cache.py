"""The official OpenAI Python SDK consuming answers from dragoman's response cache: a stream
served from a cached whole answer, and a whole answer served from a cached stream. Started by
tests/cache.rs with the gateway's address in DRAGOMAN_URL; the model `cached` caches."""

import os
import unittest

import openai

GATEWAY = os.environ["DRAGOMAN_URL"]


def oai():
    return openai.OpenAI(base_url=GATEWAY + "/v1", api_key="client-key", max_retries=0, timeout=20)


class StreamsFromTheCache(unittest.TestCase):
    def test_a_cached_answer_streams_to_the_sdk(self):
        messages = [{"role": "user", "content": "cached then streamed"}]
        raw = oai().chat.completions.with_raw_response.create(model="cached", messages=messages)
        self.assertEqual(raw.headers.get("x-dragoman-cache"), "miss")
        whole = raw.parse()
        raw = oai().chat.completions.with_raw_response.create(
            model="cached", messages=messages, stream=True, stream_options={"include_usage": True})
        self.assertEqual(raw.headers.get("x-dragoman-cache"), "hit")
        content, finish, usage = "", None, None
        for chunk in raw.parse():
            self.assertEqual(chunk.object, "chat.completion.chunk")
            for choice in chunk.choices:
                content += choice.delta.content or ""
                finish = choice.finish_reason or finish
            usage = chunk.usage or usage
        self.assertEqual(content, whole.choices[0].message.content)
        self.assertEqual(finish, whole.choices[0].finish_reason)
        self.assertIsNotNone(usage)
        self.assertEqual(usage.total_tokens, whole.usage.total_tokens)

    def test_a_cached_stream_answers_the_sdk_whole(self):
        messages = [{"role": "user", "content": "streamed then whole"}]
        raw = oai().chat.completions.with_raw_response.create(
            model="cached", messages=messages, stream=True)
        self.assertEqual(raw.headers.get("x-dragoman-cache"), "miss")
        streamed = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        raw = oai().chat.completions.with_raw_response.create(model="cached", messages=messages)
        self.assertEqual(raw.headers.get("x-dragoman-cache"), "hit")
        self.assertEqual(raw.parse().choices[0].message.content, streamed)


if __name__ == "__main__":
    unittest.main()
