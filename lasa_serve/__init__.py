"""lasa-steer's OpenAI-compatible server: a thin layer over the ``lasa_steer`` library."""
