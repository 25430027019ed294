"""The generated demo corpus (``orchestrate synth``): drawn faces and synthetic voices."""

from orchestrate.corpus.synth import ClipSpec, corpus_clips, synthesize_clip, synthesize_corpus

__all__ = ["ClipSpec", "corpus_clips", "synthesize_clip", "synthesize_corpus"]
