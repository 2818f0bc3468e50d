"""Shared by the real-model tests: the prompts, the small preference file, the chat-template helper."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = [
    "What is the capital of France?",
    "Reply with one word: what color is the sky?",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
]


def chat_ids(tokenizer, text: str) -> list[int]:
    """A user prompt through the real chat template, ending with the assistant header."""
    return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


# A small user preference file in the conversational schema (whole conversations; the prompt is their
# shared prefix): what the training tests and the README walkthrough train on.
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I think it is Berlin."),
    ("What is 2 + 2?", "2 + 2 = 4.", "2 + 2 = 5."),
    ("Name a primary color.", "Red is a primary color.", "Purple, probably."),
    ("Say hello politely.", "Hello, nice to meet you!", "What do you want?"),
]


def write_pairs_file(path) -> str:
    import json

    def conversation(prompt, answer):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    with open(path, "w") as f:
        for prompt, chosen, rejected in PAIRS:
            f.write(json.dumps({"chosen": conversation(prompt, chosen),
                                "rejected": conversation(prompt, rejected)}) + "\n")
    return str(path)
