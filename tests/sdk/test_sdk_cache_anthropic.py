"""The official Anthropic Python SDK consuming answers from dragoman's response cache: a stream
served from a cached whole message, and a whole message served from a cached stream. Started by
tests/cache.rs with the gateway's address in DRAGOMAN_URL; the model `claude` caches (on an
Anthropic-kind upstream)."""

import os
import unittest

import anthropic

GATEWAY = os.environ["DRAGOMAN_URL"]


def ant():
    return anthropic.Anthropic(base_url=GATEWAY, api_key="client-key", max_retries=0, timeout=20)


def text_of(message):
    return "".join(block.text for block in message.content if block.type == "text")


class StreamsFromTheCache(unittest.TestCase):
    def test_a_cached_message_streams_to_the_sdk(self):
        messages = [{"role": "user", "content": "cached then streamed"}]
        raw = ant().messages.with_raw_response.create(
            model="claude", max_tokens=64, messages=messages)
        self.assertEqual(raw.headers.get("x-dragoman-cache"), "miss")
        whole = raw.parse()
        with ant().messages.stream(model="claude", max_tokens=64, messages=messages) as stream:
            self.assertEqual(stream.response.headers.get("x-dragoman-cache"), "hit")
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        self.assertEqual(streamed, text_of(whole))
        self.assertEqual(final.id, whole.id)
        self.assertEqual(text_of(final), text_of(whole))
        self.assertEqual(final.stop_reason, whole.stop_reason)
        self.assertEqual(final.usage.input_tokens, whole.usage.input_tokens)
        self.assertEqual(final.usage.output_tokens, whole.usage.output_tokens)

    def test_a_cached_stream_answers_the_sdk_whole_and_streamed(self):
        messages = [{"role": "user", "content": "streamed then whole"}]
        raw = ant().messages.with_raw_response.create(
            model="claude", max_tokens=64, messages=messages, stream=True)
        self.assertEqual(raw.headers.get("x-dragoman-cache"), "miss")
        streamed = "".join(
            event.delta.text for event in raw.parse()
            if event.type == "content_block_delta" and event.delta.type == "text_delta")
        self.assertTrue(streamed)
        raw = ant().messages.with_raw_response.create(
            model="claude", max_tokens=64, messages=messages)
        self.assertEqual(raw.headers.get("x-dragoman-cache"), "hit")
        whole = raw.parse()
        self.assertEqual(text_of(whole), streamed)
        self.assertEqual(whole.stop_reason, "end_turn")
        raw = ant().messages.with_raw_response.create(
            model="claude", max_tokens=64, messages=messages, stream=True)
        self.assertEqual(raw.headers.get("x-dragoman-cache"), "hit")
        again = "".join(
            event.delta.text for event in raw.parse()
            if event.type == "content_block_delta" and event.delta.type == "text_delta")
        self.assertEqual(again, streamed)


if __name__ == "__main__":
    unittest.main()
