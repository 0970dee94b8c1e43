"""Evaluation: multiple-choice scoring (letter and cloze, with floors), perplexity, relearning."""
