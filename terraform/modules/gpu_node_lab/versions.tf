terraform {
  # terraform_data (the built-in provider) needs Terraform 1.4; 1.5 is the supported floor.
  required_version = ">= 1.5"
}
