"""LLM from Scratch: one package per chapter, each generated from its notebook."""
