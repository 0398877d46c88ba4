"""The experiment configuration: typed, validated once, passed down."""
