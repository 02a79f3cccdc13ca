"""Testing support: the ``app.test()`` harness, a pytest plugin, and the conformance suite."""

from binder.testing.harness import AsyncTestClient, Recorder, TestClient, TestHarness

__all__ = ["AsyncTestClient", "Recorder", "TestClient", "TestHarness"]
