"""The inference engine: requests, KV cache, scheduler, runner, sampler; the engine process."""
