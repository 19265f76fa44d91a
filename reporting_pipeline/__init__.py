"""Weekly PDF reports for clinical-trial participants."""
