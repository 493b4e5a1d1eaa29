"""Load generation for the three kinds, keeping the exact account of what was sent."""
