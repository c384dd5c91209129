"""The running agent: capture and inference loops, the engine that loads and swaps models, health."""
