terraform {
  required_version = ">= 1.9.0" # validations that read another variable (endpoint_acm_certificate_arn)

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0"
    }
  }
}
