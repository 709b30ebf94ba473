"""Real-time streaming: sliding windows over PCM with a front-end feature cache (`edgeser stream`)."""
