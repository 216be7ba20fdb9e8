from tests.flows.harness import env, env_factory

__all__ = ["env", "env_factory"]
