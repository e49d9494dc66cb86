"""The Responses API engine: translation to and from Chat Completions, streaming events, ids."""
