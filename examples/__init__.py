"""Runnable examples of avatar_im in web apps and notebooks; run them from the repository root."""
