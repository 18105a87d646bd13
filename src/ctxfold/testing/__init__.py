"""Test helpers shipped with ctxfold: a fake OpenAI-compatible server (the scripted model lives in
:mod:`ctxfold.models.scripted`)."""

from ctxfold.testing.fake_openai import FakeOpenAIServer, Fault

__all__ = ["FakeOpenAIServer", "Fault"]
