"""Who is calling and what they may use: keys, roles, tenants, limits, admission, usage.

Knows the store and the engines' names, never HTTP: the api layer turns its errors into statuses.
"""
