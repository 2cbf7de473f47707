"""Other inference engines that run lasa vector files (optional extras): :mod:`.vllm`."""
