"""The foundation every package may import: config, errors, task data, prompts, answer grading and the
records that move between phases. It imports nothing of tutorloop outside itself."""
