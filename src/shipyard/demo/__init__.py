"""The built-in demo model: trained here, from text that ships with Python, in minutes on a CPU."""
