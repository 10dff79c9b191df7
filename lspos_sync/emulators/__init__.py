"""Emulators of the Lightspeed R-Series and Salesforce APIs, served over real HTTP on loopback.

They follow the behaviour documented in the reference fact sheets (not what our client happens to
expect), so the tests and `lspos-sync demo` drive the real engine against them.
"""
