"""Output quality: eval runs over a dataset (`shipyard eval run`) and the hallucination signals'
power on a labelled set (`shipyard eval hallucination`). Results land in the score store."""
