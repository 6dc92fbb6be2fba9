"""Templates shipped with mailbot (mail and web); an operator directory may override them."""
