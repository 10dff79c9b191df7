"""lspos-sync: keeps Salesforce in step with a Lightspeed Retail (R-Series) point of sale."""

__version__ = "0.1.0"
