"""Label quality: out-of-sample probabilities, cleanlab label issues, consensus, the review queue."""
